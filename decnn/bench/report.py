"""Benchmark results: per-configuration medians over rounds, ratios against the 1-device baselines.

Ratios are taken within a round (the baseline and the configuration ran minutes apart at most, under the
same machine noise) and then the median over rounds is reported.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from decnn.bench.plan import Config
from decnn.train.logger import make_logger

_MB = 2**20
BASELINES = {"resnet34": "resnet34 single", "decnn_single": "decnn single"}


def summarize(config: Config, reports: list[dict], baselines: list[dict[str, dict]], prediction) -> dict:
    """One record: ``reports[r]`` is round r's report of ``config``, ``baselines[r]`` that round's baselines."""
    first = reports[0]
    p50 = [r["latency_ms"]["p50"] for r in reports]
    record = {
        "name": config.name,
        "model": first["model"],
        "groups": first["groups"],
        "width": first["width"],
        "mode": config.mode,
        "devices": config.devices,
        "oversubscribed": config.oversubscribed,
        "batch": config.batch,
        "exchange_dtype": config.exchange_dtype,
        "overlap": config.overlap,
        "link": config.link or "loopback",
        "rounds": len(reports),
        "latency_ms": {q: statistics.median(r["latency_ms"][q] for r in reports) for q in ("p50", "p95", "p99")},
        "latency_p50_ms_per_round": p50,
        "throughput_ips": statistics.median(r["throughput_ips"] for r in reports),
        "bytes_per_image": first["bytes_per_image"],
        "bytes_per_image_per_point": first["bytes_per_image_per_point"],
        "params_per_rank": first["params_per_rank"],
        "peak_rss_per_rank": first["peak_rss_per_rank"],
    }
    for key, base_name in BASELINES.items():
        bases = [b[base_name] for b in baselines]
        record[f"latency_ratio_vs_{key}"] = statistics.median(
            b["latency_ms"]["p50"] / r["latency_ms"]["p50"] for b, r in zip(bases, reports))
        record[f"throughput_ratio_vs_{key}"] = statistics.median(
            r["throughput_ips"] / b["throughput_ips"] for b, r in zip(bases, reports))
    if prediction is not None:
        record["predicted_latency_ms"] = 1e3 * (prediction.per_batch_s if config.overlap > 1 else prediction.step_s)
        record["predicted_compute_ms"] = 1e3 * prediction.compute_s
        record["predicted_transfer_ms"] = 1e3 * prediction.transfer_s
        # With batches in flight the per-batch cost is the steady-state time, 1 / throughput.
        record["measured_for_prediction_ms"] = (
            1e3 * config.batch / record["throughput_ips"] if config.overlap > 1 else record["latency_ms"]["p50"])
    return record


def format_markdown(records: list[dict]) -> str:
    lines = [
        "| configuration | batch | link | devices | p50 ms | p95 ms | images/s | latency speedup vs ResNet-34 "
        "| vs DeCNN 1-dev | throughput vs DeCNN 1-dev | KB sent/image | params/device MB | predicted ms |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        devices = f"{r['devices']}" + (" (oversubscribed)" if r["oversubscribed"] else "")
        predicted = (f"{r['predicted_latency_ms']:.1f} (vs {r['measured_for_prediction_ms']:.1f})"
                     if "predicted_latency_ms" in r else "–")
        lines.append(
            f"| {r['name']} | {r['batch']} | {r['link']} | {devices} | {r['latency_ms']['p50']:.1f} "
            f"| {r['latency_ms']['p95']:.1f} | {r['throughput_ips']:.1f} | {r['latency_ratio_vs_resnet34']:.2f}x "
            f"| {r['latency_ratio_vs_decnn_single']:.2f}x | {r['throughput_ratio_vs_decnn_single']:.2f}x "
            f"| {r['bytes_per_image'] / 1024:.0f} "
            f"| {max(r['params_per_rank']) / _MB:.1f} | {predicted} |"
        )
    return "\n".join(lines)


def write(records: list[dict], meta: dict, out: Path, log_dir: str | None) -> None:
    """JSON (``out``), Markdown beside it, and one TensorBoard run per configuration under ``log_dir``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "records": records}, indent=2) + "\n")
    out.with_suffix(".md").write_text(format_markdown(records) + "\n")
    if not log_dir:
        return
    for r in records:
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{r['name']}-d{r['devices']}-b{r['batch']}-{r['link']}")
        with make_logger(Path(log_dir) / meta["started"] / slug) as log:
            hparams = {k: r[k] for k in ("model", "groups", "width", "mode", "devices", "batch",
                                         "exchange_dtype", "overlap", "link")}
            metrics = {
                "bench/latency_p50_ms": r["latency_ms"]["p50"],
                "bench/latency_p95_ms": r["latency_ms"]["p95"],
                "bench/throughput_ips": r["throughput_ips"],
                "bench/bytes_per_image": r["bytes_per_image"],
                "bench/params_per_device_mb": max(r["params_per_rank"]) / _MB,
                "bench/latency_ratio_vs_resnet34": r["latency_ratio_vs_resnet34"],
                "bench/latency_ratio_vs_decnn_single": r["latency_ratio_vs_decnn_single"],
            }
            if "predicted_latency_ms" in r:
                metrics["bench/predicted_latency_ms"] = r["predicted_latency_ms"]
            log.hparams(hparams, metrics)
