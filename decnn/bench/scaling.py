"""The paper's experiment on emulated boards: DeCNN against the peers' spatial splits on 1 to 8 devices, each device a
board of a fraction of a core (:mod:`decnn.emulation`), in the device runtime (ONNX Runtime + MPI). Needs root.

    sudo .venv/bin/decnn bench scaling                                 # the paper's table: ResNet-50 at 224
    sudo .venv/bin/decnn bench scaling --family resnet34 --batch 1 8   # ResNet-34 G4 and G8 at 64, to 8 devices
    sudo .venv/bin/decnn bench scaling --link loopback 1gbit 100mbit --rounds 5

A *series* is one method on one model: DeCNN's branches of the family's DeCNN (and, for ResNet-34, its G8),
MoDNN's row bands and Coates et al.'s tiles of the plain model. Each runs on each of its device counts and links;
on 1 device it is the model's whole graph on one board, the series' own baseline. A family's boards all get the
same share of a core (the cores over its most devices), so every speed-up compares like boards. Rounds
interleave every run; a figure is the median over rounds, a speed-up the median of the rounds' ratios. Every
split row carries the cost model's prediction from parts measured on the same boards (``decnn edge
--predict``) and each device's memory: its peak RSS, and its RSS above an idle device of the runtime as a share
of the whole model's. The emulation is validated in the same run (the 2-device speed-up at half a core against
whole cores). Writes JSON, Markdown, a plot of speed-up against devices and one TensorBoard run per row.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from decnn.bench.boards import LOOPBACK, Boards, BoardsError
from decnn.bench.configurations import BASELINE, DECNN, FAMILIES, BenchConfig
from decnn.common.exitcodes import run_main
from decnn.common.job_parser import job_parser
from decnn.common.record import MB, Latency, RunRecord
from decnn.emulation.netns import LinkError
from decnn.emulation.quota import quotas_available
from decnn.emulation.rates import parse_rate

METHODS = {"branch": "DeCNN", "modnn": "MoDNN", "grid": "Coates et al."}


@dataclass(frozen=True)
class Series:
    """One method on one model (timm kwargs with ``model``) over ``devices``; 1 device is its whole model.
    DeCNN's branches exchange in ``exchange_dtype`` (its own codecs: int8 moves a quarter of the bytes)."""

    name: str
    method: str
    model: dict
    devices: tuple[int, ...]
    exchange_dtype: str = "fp32"


SERIES = {
    "resnet50": (Series("decnn50", "branch", FAMILIES["resnet50"].decnn, (1, 2, 4)),
                 Series("decnn50", "branch", FAMILIES["resnet50"].decnn, (1, 2, 4), "int8"),
                 Series("resnet50", "modnn", FAMILIES["resnet50"].plain, (1, 2, 4)),
                 Series("resnet50", "grid", FAMILIES["resnet50"].plain, (1, 4))),
    "resnet34": (Series("decnn", "branch", DECNN, (1, 2, 4)),
                 Series("decnn-g8", "branch", {**DECNN, "groups": 8}, (1, 2, 4, 8)),
                 Series("resnet34", "modnn", BASELINE, (1, 2, 4, 8)),
                 Series("resnet34", "grid", BASELINE, (1, 4, 8))),
    "tiny": (Series("decnn18", "branch", FAMILIES["tiny"].decnn, (1, 2)),
             Series("resnet18", "modnn", FAMILIES["tiny"].plain, (1, 2)),
             Series("resnet18", "grid", FAMILIES["tiny"].plain, (1, 4))),
}


def runs(families: list[str], batches: list[int], links: list[str]) -> list[BenchConfig]:
    """Every run, once: each series' device counts over each link (1 device: its whole model, no link)."""
    out = {}
    for family in families:
        for series in SERIES[family]:
            for batch in batches:
                for n in series.devices:
                    for link in ([LOOPBACK] if n == 1 else links):
                        mode = "single" if n == 1 else series.method
                        dtype = series.exchange_dtype if mode == "branch" else "fp32"
                        name = f"{series.name} {mode}" + (f" {dtype}" if dtype != "fp32" else "")
                        config = BenchConfig(name, mode, n, batch, dict(series.model), dtype, link=link,
                                             runtime="edge", family=family)
                        out[config.label()] = config
    return list(out.values())


def board_share(family: str, cores: int) -> float:
    """The share of a core every board of ``family`` gets: its most devices fill the cores."""
    return cores / max(n for s in SERIES[family] for n in s.devices)


def rows(configs: list[BenchConfig], records: dict[str, list[RunRecord]], idle_bytes: int) -> list[RunRecord]:
    """One record per run: medians over rounds, the speed-up over its own model's 1-device run within each round,
    the RSS above an idle device as a share of the whole model's, the cost model's median prediction."""
    singles = {(c.family, str(sorted(c.model.items())), c.batch): records[c.label()] for c in configs
               if c.mode == "single"}
    out = []
    for c in configs:
        reports = records[c.label()]
        single = singles[c.family, str(sorted(c.model.items())), c.batch]
        whole_rss = statistics.median(r.peak_rss_per_rank[0] for r in single)
        above = max(statistics.median(r.peak_rss_per_rank[d] for r in reports) for d in range(c.devices))
        predicted = [r.predicted_latency_ms for r in reports if r.predicted_latency_ms is not None]
        latency = Latency(*(statistics.median(getattr(r.latency_ms, q) for r in reports)
                            for q in ("p50", "p95", "p99")))
        out.append(dataclasses.replace(
            reports[0], name=c.name, link=c.link, rounds=len(reports), latency_ms=latency,
            latency_p50_ms_per_round=[r.latency_ms.p50 for r in reports],
            throughput_ips=statistics.median(r.throughput_ips for r in reports),
            speedup_vs_one_device=statistics.median(s.latency_ms.p50 / r.latency_ms.p50
                                                    for s, r in zip(single, reports)),
            rss_above_idle_vs_whole=(above - idle_bytes) / max(whole_rss - idle_bytes, 1),
            breakdown_per_rank=sorted(reports, key=lambda r: r.latency_ms.p50)[len(reports) // 2].breakdown_per_rank,
            predicted_latency_ms=statistics.median(predicted) if predicted else None,
            measured_for_prediction_ms=latency.p50 if predicted else None,
            predicted_compute_ms=statistics.median(r.predicted_compute_ms for r in reports) if predicted else None,
            predicted_transfer_ms=statistics.median(r.predicted_transfer_ms for r in reports) if predicted else None,
        ))
    return out


def table(records: list[RunRecord]) -> str:
    """The scaling table: per row its speed-up, what it moves, its memory and the cost model's error."""
    lines = ["| image | method | model | devices | CPU per device | link | batch | p50 ms | speed-up vs its 1 device "
             "| exchanges | KB sent/image | peak RSS MiB per device | RSS above idle / whole model's "
             "| predicted ms | error |",
             "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        method = METHODS.get(r.mode, "whole model") + _dtype(r)
        model = f"{r.model.removeprefix('decnn_')} g{r.groups} x{r.width:g}"
        rss = max(r.peak_rss_per_rank) / MB
        error = (f"{(r.predicted_latency_ms - r.latency_ms.p50) / r.latency_ms.p50:+.1%}"
                 if r.predicted_latency_ms is not None else "–")
        predicted = f"{r.predicted_latency_ms:.1f}" if r.predicted_latency_ms is not None else "–"
        lines.append(f"| {r.image_size} | {method} | {model} | {r.devices} | {r.cpu_fraction:g} | {r.link} "
                     f"| {r.batch} | {r.latency_ms.p50:.1f} | {r.speedup_vs_one_device:.2f}x "
                     f"| {r.exchanges_per_batch or 0} | {r.bytes_per_image / 1024:.0f} | {rss:.0f} "
                     f"| {r.rss_above_idle_vs_whole:.2f} | {predicted} | {error} |")
    return "\n".join(lines)


def versus(records: list[RunRecord]) -> str:
    """DeCNN against each spatial split at the same family, devices, link and batch (ratio of p50 latencies)."""
    lines = ["| image | devices | link | batch | DeCNN exchange | DeCNN p50 ms | MoDNN p50 ms | Coates p50 ms "
             "| DeCNN vs MoDNN | DeCNN vs Coates |", "|---:|---:|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in records:
        if r.mode != "branch" or r.groups != 4:
            continue
        peers = {p.mode: p.latency_ms.p50 for p in records if p.image_size == r.image_size and p.devices == r.devices
                 and p.link == r.link and p.batch == r.batch and p.mode in ("modnn", "grid")}
        cells = [f"{peers[m]:.1f}" if m in peers else "–" for m in ("modnn", "grid")]
        ratios = [f"{peers[m] / r.latency_ms.p50:.2f}x" if m in peers else "–" for m in ("modnn", "grid")]
        lines.append(f"| {r.image_size} | {r.devices} | {r.link} | {r.batch} | {r.exchange_dtype or 'fp32'} "
                     f"| {r.latency_ms.p50:.1f} "
                     f"| {' | '.join(cells)} | {' | '.join(ratios)} |")
    return "\n".join(lines)


def _dtype(r: RunRecord, dtype: str | None = None) -> str:
    """" int8" where DeCNN's exchange is compressed, "" for fp32."""
    dtype = r.exchange_dtype if dtype is None else dtype
    return f" {dtype}" if dtype not in (None, "fp32") else ""


def plot(records: list[RunRecord], path: Path) -> None:
    """Speed-up against devices, one line per method, model and link; one panel per image size and batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r.image_size, r.batch) for r in records})
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (size, batch) in zip(axes[0], panels):
        mine = [r for r in records if (r.image_size, r.batch) == (size, batch)]
        methods = sorted({(r.mode, r.model, r.groups, r.exchange_dtype) for r in mine if r.devices > 1})
        links = sorted({r.link for r in mine if r.devices > 1}, key=lambda link: link != LOOPBACK)
        for (mode, model, groups, dtype), color in zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
            for link, style in zip(links, ("-", "--", ":", "-.")):
                pts = sorted([(1, 1.0)] + [(r.devices, r.speedup_vs_one_device) for r in mine
                                           if (r.mode, r.model, r.groups, r.exchange_dtype, r.link)
                                           == (mode, model, groups, dtype, link)])
                label = f"{METHODS[mode]}{_dtype(mine[0], dtype)}, {model.removeprefix('decnn_')} g{groups}, {link}"
                ax.plot([d for d, _ in pts], [s for _, s in pts], marker="o", color=color, linestyle=style,
                        label=label)
        most = max(r.devices for r in mine)
        ax.plot([1, most], [1, most], color="grey", linewidth=0.8, label="linear")
        ax.set_xlabel("devices (boards)")
        ax.set_ylabel("latency speed-up over the same model on 1 board")
        ax.set_title(f"{size}x{size}, batch {batch}, {mine[0].cpu_fraction:g} core per board")
        ax.set_xticks(sorted({r.devices for r in mine}))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(records: list[RunRecord], validation: dict | None, meta: dict, out: Path, log_dir: str | None) -> None:
    """JSON, Markdown (the tables, the validation), the plot (.png) and one TensorBoard run per row."""
    from decnn.bench.validate_boards import verdict
    from decnn.common.logger import experiment_root, make_logger

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "validation": validation, "records": [r.to_dict() for r in records]},
                              indent=2) + "\n")
    sections = [f"`{meta['command']}`", table(records), versus(records)]
    if validation:
        sections.append(verdict(validation))
    out.with_suffix(".md").write_text("\n\n".join(sections) + "\n")
    plot(records, out.with_suffix(".png"))
    if log_dir:
        for r in records:
            slug = f"{r.name}-d{r.devices}-b{r.batch}-{r.link}".replace(" ", "-")
            with make_logger(Path(log_dir) / meta["started"] / slug, log_root=experiment_root(log_dir)) as log:
                r.log_hparams(log)


def main(argv: list[str] | None = None) -> int:
    """``decnn bench scaling``: 0 done, 2 bad arguments, 1 a failed run or no cgroups here (one line each)."""
    argv = sys.argv[1:] if argv is None else argv
    return run_main(lambda: _main(argv), usage_errors=(ValueError,), runtime_errors=(BoardsError, LinkError))


def _main(argv: list[str]) -> None:
    p = job_parser("bench scaling", __doc__)
    p.add_argument("--family", nargs="+", choices=tuple(SERIES), default=["resnet50"],
                   help="resnet50: the paper's, at 224x224 on 1, 2, 4 devices (default); resnet34: G4 and G8 at "
                   "64x64 on up to 8")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (default 1)")
    p.add_argument("--link", nargs="+", default=[LOOPBACK, "1gbit"],
                   help="loopback (MPI over shared memory) and/or tbf rates such as 1gbit 100mbit (default: "
                   "loopback 1gbit)")
    p.add_argument("--cpu", type=float, help="each board's share of a core (default: the cores over a family's "
                   "most devices: 0.5 for ResNet-50's 4, 0.25 for ResNet-34's 8)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--images", type=int, default=16, help="timed batches per run (default 16)")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per run (default 2)")
    p.add_argument("--no-validate", dest="validate", action="store_false",
                   help="skip the emulation's validation (2 devices at half a core against whole cores)")
    p.add_argument("--out", default="results/scaling.json", help="JSON; Markdown and the plot beside it")
    p.add_argument("--log-dir", default="runs/bench", help="TensorBoard runs ('' for none)")
    args = p.parse_args(argv)
    for flag in ("rounds", "images"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1")
    for link in args.link:
        if link != LOOPBACK:
            parse_rate(link)
    cores = len(os.sched_getaffinity(0))
    shares = {f: args.cpu or board_share(f, cores) for f in args.family}
    configs = runs(args.family, args.batch, args.link)
    for c in configs:
        Boards(c.devices, shares[c.family], c.link)  # a share beyond this machine's cores: one line, before exporting
    ok, reason = quotas_available()
    if not ok:
        raise LinkError(reason)
    from decnn.bench.edge import export_kind, export_models, idle_rss_bytes  # torch: after the arguments
    from decnn.bench.validate_boards import validate, verdict

    records: dict[str, list[RunRecord]] = {c.label(): [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="decnn-bench-scaling-") as tmp:
        check = [BenchConfig("edge decnn single", "single", 1, 1, runtime="edge"),
                 BenchConfig("edge decnn branch fp32", "branch", 2, 1, runtime="edge")]
        print(f"exporting {len({export_kind(c) for c in configs + check})} models for the device runtime ...",
              flush=True)
        folders = export_models(configs + (check if args.validate else []), Path(tmp))
        idle = idle_rss_bytes()
        bar = tqdm(total=args.rounds * len(configs), desc="scaling", unit="run", file=sys.stdout)
        for r in range(args.rounds):
            for c in configs[r % len(configs):] + configs[:r % len(configs)]:  # no run always first
                bar.set_postfix_str(c.label())
                run_args = ["--batch", c.batch, "--images", args.images * c.batch, "--warmup", args.warmup]
                if c.mode == "branch":
                    run_args += ["--predict", "--exchange-dtype", c.exchange_dtype]
                elif c.mode != "single":
                    run_args += ["--predict", "--mode", c.mode]
                with Boards(c.devices, shares[c.family], c.link) as boards:
                    records[c.label()].append(boards.edge(folders[export_kind(c)], run_args, single=c.mode == "single"))
                bar.update()
        bar.close()
        validation = None
        if args.validate:
            print("validating the emulation: 2 devices at 1 and 0.5 of a core ...", flush=True)
            validation = validate(folders[export_kind(check[0])], folders[export_kind(check[1])], (1.0, 0.5),
                                  args.rounds, images=32)
    result = rows(configs, records, idle)
    meta = {"started": time.strftime("%Y%m%d-%H%M%S"), "command": " ".join(["decnn bench scaling", *argv]),
            "cores": cores, "idle_rss_bytes": idle, "cpu_per_board": shares}
    write(result, validation, meta, Path(args.out), args.log_dir)
    print(table(result))
    print()
    print(versus(result))
    if validation:
        print("\n" + verdict(validation))
    print(f"\nwrote {args.out}, {Path(args.out).with_suffix('.md')} and {Path(args.out).with_suffix('.png')}")


if __name__ == "__main__":
    sys.exit(main())
