"""Benchmark results: per-configuration medians over rounds, ratios against the 1-device baselines.

Ratios are taken within a round (the baseline and the configuration ran minutes apart at most, under the
same machine noise) and then the median over rounds is reported.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import statistics
from pathlib import Path

from decnn.bench.configurations import FAMILIES, BenchConfig
from decnn.common.logger import experiment_root, make_logger
from decnn.common.record import Latency, RunRecord
from decnn.emulation.rates import parse_rate


def baseline_names(config: BenchConfig) -> dict[str, str]:
    """The 1-device rows ``config`` is compared with: its family's plain model and DeCNN, in its own runtime (the
    device runtime's rows with the models in ONNX Runtime), and ``own``, the same model as ``config``'s."""
    family = FAMILIES[config.family]
    prefix = "edge " if config.runtime == "edge" else ""
    names = {key: prefix + name for key, name in family.names().items()}
    names["own"] = names["plain"] if config.model == family.plain else names["decnn_single"]
    return names


def summarize(config: BenchConfig, reports: list[RunRecord], baselines: list[dict[str, RunRecord]],
              prediction) -> RunRecord:
    """One record: ``reports[r]`` is round r's report of ``config``, ``baselines[r]`` that round's baselines.

    Timings are medians over rounds; sizes, traffic and the per-rank figures are the first round's, but for
    the breakdown of each rank's time, which is the median round's (by p50 latency).
    """
    names = baseline_names(config)

    def latency(name: str) -> float:
        return statistics.median(b[name].latency_ms.p50 / r.latency_ms.p50 for b, r in zip(baselines, reports))

    def throughput(name: str) -> float:
        return statistics.median(r.throughput_ips / b[name].throughput_ips for b, r in zip(baselines, reports))

    ratios = {"speedup_vs_one_device": latency(names["own"]),
              "latency_ratio_vs_decnn_single": latency(names["decnn_single"]),
              "throughput_ratio_vs_decnn_single": throughput(names["decnn_single"])}
    if config.family == "resnet34":  # the model users start from, by name
        ratios.update(latency_ratio_vs_resnet34=latency(names["plain"]),
                      throughput_ratio_vs_resnet34=throughput(names["plain"]))
    latency = Latency(*(statistics.median(getattr(r.latency_ms, q) for r in reports) for q in ("p50", "p95", "p99")))
    record = dataclasses.replace(
        reports[0],
        name=config.name,
        oversubscribed=config.oversubscribed,
        link=config.link or "loopback",
        rounds=len(reports),
        run_dir=None,
        latency_ms=latency,
        latency_p50_ms_per_round=[r.latency_ms.p50 for r in reports],
        throughput_ips=statistics.median(r.throughput_ips for r in reports),
        breakdown_per_rank=sorted(reports, key=lambda r: r.latency_ms.p50)[len(reports) // 2].breakdown_per_rank,
        **ratios,
    )
    if prediction is None:  # the device runtime predicts in the run itself (decnn edge --predict)
        predicted = [r for r in reports if r.predicted_latency_ms is not None]
        if not predicted:
            return record
        return dataclasses.replace(record, **{k: statistics.median(getattr(r, k) for r in predicted) for k in (
            "predicted_latency_ms", "predicted_compute_ms", "predicted_transfer_ms")},
            measured_for_prediction_ms=latency.p50)
    # With batches in flight the per-batch cost is the steady-state time, 1 / throughput.
    measured = 1e3 * config.batch / record.throughput_ips if config.overlap > 1 else latency.p50
    return dataclasses.replace(
        record,
        predicted_latency_ms=1e3 * (prediction.per_batch_s if config.overlap > 1 else prediction.step_s),
        predicted_compute_ms=1e3 * prediction.compute_s,
        predicted_transfer_ms=1e3 * prediction.transfer_s,
        measured_for_prediction_ms=measured,
    )


def link_rate(link: str) -> float:
    """Bits per second of a record's link; loopback counts as infinitely fast."""
    return float("inf") if link == "loopback" else parse_rate(link)


def crossovers(records: list[RunRecord]) -> list[dict]:
    """Per split configuration (name, devices, batch) measured on several links: the link rate below which
    its median latency stops beating the same model on 1 device.

    Between two measured rates the latency ratio is interpolated linearly in log(rate); outside them the
    answer is a bound ("below 20mbit": it still wins at the slowest link measured; "above 1gbit": it wins
    on loopback but already loses on the fastest emulated link; "never wins").
    """
    series: dict[tuple, list[tuple[float, float, str]]] = {}
    for r in records:
        if r.devices > 1:
            ratio = r.speedup_vs_one_device
            series.setdefault((r.name, r.devices, r.batch), []).append((link_rate(r.link), ratio, r.link))
    out = []
    for (name, devices, batch), points in series.items():
        if len(points) < 2:
            continue
        points.sort(reverse=True)  # fastest link first
        crossover, bound = None, None
        if all(ratio > 1 for _, ratio, _ in points):
            bound = f"below {points[-1][2]}"
        elif points[0][1] <= 1:
            bound = "never wins"
        else:
            for (hi_rate, hi_ratio, _), (lo_rate, lo_ratio, lo_link) in itertools.pairwise(points):
                if hi_ratio > 1 >= lo_ratio:
                    if math.isinf(hi_rate):
                        bound = f"above {lo_link}"
                    else:
                        t = (hi_ratio - 1) / (hi_ratio - lo_ratio)
                        crossover = math.exp(math.log(hi_rate) + t * (math.log(lo_rate) - math.log(hi_rate)))
                    break
        out.append({"name": name, "devices": devices, "batch": batch,
                    "crossover_bit_per_s": crossover, "bound": bound,
                    "ratio_per_link": {link: ratio for _, ratio, link in points}})
    return out


def format_crossovers(rows: list[dict]) -> str:
    lines = ["| configuration | batch | devices | latency speed-up vs same model 1-dev, per link "
             "| stops winning below |",
             "|---|---:|---:|---|---|"]
    for c in rows:
        ratios = ", ".join(f"{link} {ratio:.2f}x" for link, ratio in c["ratio_per_link"].items())
        where = f"{c['crossover_bit_per_s'] / 1e6:.0f} Mbit/s" if c["crossover_bit_per_s"] else c["bound"]
        lines.append(f"| {c['name']} | {c['batch']} | {c['devices']} | {ratios} | {where} |")
    return "\n".join(lines)


def format_breakdown(records: list[RunRecord]) -> str:
    """Where each run's batch went, rank by rank (ms per batch, the median round)."""
    lines = ["| configuration | batch | link | rank | step | segments | head | normalize | pack | codec "
             "| peer wait | wire | other |", "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        for rank, b in enumerate(r.breakdown_per_rank or []):
            segments = " + ".join(f"{t:.1f}" for t in b["segments_ms"])
            lines.append(f"| {r.name} | {r.batch} | {r.link} | {rank} | {b['step_ms']:.1f} | {segments} "
                         f"| {b['head_ms']:.2f} | {b['normalize_ms']:.2f} | {b['pack_ms']:.2f} | {b['codec_ms']:.2f} "
                         f"| {b['peer_wait_ms']:.2f} | {b['wire_ms']:.2f} | {b['other_ms']:.2f} |")
    return "\n".join(lines)


def plot_links(records: list[RunRecord], path: Path) -> None:
    """Median latency vs link rate, one line per configuration and batch; 1-device baselines as flat lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r.batch for r in records if r.link != "loopback"})
    if not batches:
        return
    fig, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 4.5), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        rows = [r for r in records if r.batch == batch]
        rates = sorted({link_rate(r.link) for r in rows if r.link != "loopback"})
        loopback_x = rates[-1] * 4  # loopback drawn to the right of the fastest emulated link
        for name in dict.fromkeys(r.name for r in rows if r.devices > 1):
            pts = sorted((loopback_x if r.link == "loopback" else link_rate(r.link), r.latency_ms.p50)
                         for r in rows if r.name == name)
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=name)
        for r in rows:
            if r.devices == 1:
                ax.axhline(r.latency_ms.p50, linestyle="--", color="grey" if "resnet" in r.name else "black")
                ax.annotate(r.name.replace("resnet34", "ResNet-34").replace("decnn", "DeCNN") + " (1 device)",
                            (rates[0], r.latency_ms.p50), fontsize=8, va="bottom")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([*rates, loopback_x], [*(f"{t / 1e6:g} Mbit/s" for t in rates), "loopback"])
        ax.set_xlabel("link rate (tc tbf, per host)")
        ax.set_ylabel("median latency per batch (ms, log scale)")
        ax.set_title(f"batch {batch}, 2 devices")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bench_table(records: list[RunRecord]) -> str:
    """One row per configuration; "edge" rows (ONNX Runtime + MPI) are compared with the same models in ONNX
    Runtime on one device, the other rows with PyTorch on one device."""
    lines = [
        "| configuration | batch | link | transport | devices | p50 ms | p95 ms | images/s "
        "| latency speed-up vs same model 1-dev | vs ResNet-34 1-dev | vs DeCNN 1-dev | throughput vs DeCNN 1-dev "
        "| exchanges | KB sent/image | params/device MB | peak RSS MB | predicted ms |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        devices = f"{r.devices}" + (" (oversubscribed)" if r.oversubscribed else "")
        predicted = (f"{r.predicted_latency_ms:.1f} (vs {r.measured_for_prediction_ms:.1f})"
                     if r.predicted_latency_ms is not None else "–")
        lines.append(
            f"| {r.name} | {r.batch} | {r.link} | {r.transport or '–'} | {devices} | {r.latency_ms.p50:.1f} "
            f"| {r.latency_ms.p95:.1f} | {r.throughput_ips:.1f} | {_x(r.speedup_vs_one_device)} "
            f"| {_x(r.latency_ratio_vs_resnet34)} | {_x(r.latency_ratio_vs_decnn_single)} "
            f"| {_x(r.throughput_ratio_vs_decnn_single)} | {_n(r.exchanges_per_batch)} "
            f"| {r.bytes_per_image / 1024:.0f} | {r.params_per_device_mb:.1f} | {_mb(r.peak_rss_mb)} | {predicted} |"
        )
    return "\n".join(lines)


def _mb(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _n(value: int | None) -> str:
    return "–" if value is None else str(value)


def format_errors(records: list[RunRecord]) -> str:
    """Every prediction's error against its measurement, then their median and max |error|."""
    rows = [r for r in records if r.predicted_latency_ms is not None]
    if not rows:
        return ""
    lines = ["| configuration | batch | link | devices | predicted ms | measured ms | error |",
             "|---|---:|---|---:|---:|---:|---:|"]
    errors = []
    for r in rows:
        err = (r.predicted_latency_ms - r.measured_for_prediction_ms) / r.measured_for_prediction_ms
        errors.append(abs(err))
        lines.append(f"| {r.name} | {r.batch} | {r.link} | {r.devices} | {r.predicted_latency_ms:.1f} "
                     f"| {r.measured_for_prediction_ms:.1f} | {err:+.1%} |")
    lines.append(f"\ncost model |error|: median {statistics.median(errors):.1%}, max {max(errors):.1%} "
                 f"over {len(errors)} configurations")
    return "\n".join(lines)


def write(records: list[RunRecord], meta: dict, out: Path, log_dir: str | None) -> None:
    """JSON (``out``), Markdown beside it (results, crossovers, cost-model errors, breakdowns), the link plot
    (``.png``, with emulated links) and one TensorBoard run per configuration under ``log_dir``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cross = crossovers(records)
    out.write_text(json.dumps({"meta": meta, "records": [r.to_dict() for r in records], "crossovers": cross},
                              indent=2) + "\n")
    sections = [bench_table(records), format_crossovers(cross) if cross else "", format_errors(records),
                format_breakdown(records)]
    out.with_suffix(".md").write_text("\n\n".join(s for s in sections if s) + "\n")
    plot_links(records, out.with_suffix(".png"))
    if not log_dir:
        return
    for r in records:
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{r.name}-d{r.devices}-b{r.batch}-{r.link}")
        with make_logger(Path(log_dir) / meta["started"] / slug, log_root=experiment_root(log_dir)) as log:
            r.log_hparams(log)


def write_result(out: str | Path, result: dict, markdown: str) -> str:
    """A stand-alone measurement's ``result`` as JSON at ``out`` and its ``markdown`` beside it; says where."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown)
    return f"wrote {out} and {out.with_suffix('.md')}"


def read(path: Path) -> tuple[dict, list[RunRecord]]:
    """The meta and records of a benchmark JSON written by :func:`write`."""
    data = json.loads(Path(path).read_text())
    return data["meta"], [RunRecord.from_dict(r) for r in data["records"]]
