"""Benchmark results: per-configuration medians over rounds, ratios against the 1-device baselines.

Ratios are taken within a round (the baseline and the configuration ran minutes apart at most, under the
same machine noise) and then the median over rounds is reported.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
from pathlib import Path

from decnn.bench.plan import BenchConfig
from decnn.record import Latency, RunRecord
from decnn.train.logger import make_logger

BASELINES = {"resnet34": "resnet34 single", "decnn_single": "decnn single"}


def summarize(config: BenchConfig, reports: list[RunRecord], baselines: list[dict[str, RunRecord]],
              prediction) -> RunRecord:
    """One record: ``reports[r]`` is round r's report of ``config``, ``baselines[r]`` that round's baselines.

    Timings are medians over rounds; sizes, traffic and the per-rank figures are the first round's.
    """
    ratios = {}
    for key, base_name in BASELINES.items():
        bases = [b[base_name] for b in baselines]
        ratios[f"latency_ratio_vs_{key}"] = statistics.median(
            b.latency_ms.p50 / r.latency_ms.p50 for b, r in zip(bases, reports))
        ratios[f"throughput_ratio_vs_{key}"] = statistics.median(
            r.throughput_ips / b.throughput_ips for b, r in zip(bases, reports))
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
        **ratios,
    )
    if prediction is None:
        return record
    # With batches in flight the per-batch cost is the steady-state time, 1 / throughput.
    measured = 1e3 * config.batch / record.throughput_ips if config.overlap > 1 else latency.p50
    return dataclasses.replace(
        record,
        predicted_latency_ms=1e3 * (prediction.per_batch_s if config.overlap > 1 else prediction.step_s),
        predicted_compute_ms=1e3 * prediction.compute_s,
        predicted_transfer_ms=1e3 * prediction.transfer_s,
        measured_for_prediction_ms=measured,
    )


def bench_table(records: list[RunRecord]) -> str:
    lines = [
        "| configuration | batch | link | devices | p50 ms | p95 ms | images/s | latency speedup vs ResNet-34 "
        "| vs DeCNN 1-dev | throughput vs DeCNN 1-dev | KB sent/image | params/device MB | predicted ms |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        devices = f"{r.devices}" + (" (oversubscribed)" if r.oversubscribed else "")
        predicted = (f"{r.predicted_latency_ms:.1f} (vs {r.measured_for_prediction_ms:.1f})"
                     if r.predicted_latency_ms is not None else "–")
        lines.append(
            f"| {r.name} | {r.batch} | {r.link} | {devices} | {r.latency_ms.p50:.1f} "
            f"| {r.latency_ms.p95:.1f} | {r.throughput_ips:.1f} | {r.latency_ratio_vs_resnet34:.2f}x "
            f"| {r.latency_ratio_vs_decnn_single:.2f}x | {r.throughput_ratio_vs_decnn_single:.2f}x "
            f"| {r.bytes_per_image / 1024:.0f} | {r.params_per_device_mb:.1f} | {predicted} |"
        )
    return "\n".join(lines)


def write(records: list[RunRecord], meta: dict, out: Path, log_dir: str | None) -> None:
    """JSON (``out``), Markdown beside it, and one TensorBoard run per configuration under ``log_dir``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "records": [r.to_dict() for r in records]}, indent=2) + "\n")
    out.with_suffix(".md").write_text(bench_table(records) + "\n")
    if not log_dir:
        return
    for r in records:
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{r.name}-d{r.devices}-b{r.batch}-{r.link}")
        with make_logger(Path(log_dir) / meta["started"] / slug) as log:
            r.log_hparams(log)


def read(path: Path) -> tuple[dict, list[RunRecord]]:
    """The meta and records of a benchmark JSON written by :func:`write`."""
    data = json.loads(Path(path).read_text())
    return data["meta"], [RunRecord.from_dict(r) for r in data["records"]]
