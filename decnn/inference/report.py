"""The run's report: one dict, written as JSON (``--out``), to TensorBoard and as a console table."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from decnn.inference.config import InferConfig
from decnn.inference.inputs import batch_sizes
from decnn.inference.metrics import percentiles_ms
from decnn.inference.mode import breakdowns
from decnn.inference.spec import ModelSpec
from decnn.train.logger import make_logger

_MB = 2**20


def build_report(cfg: InferConfig, spec: ModelSpec, placement, image_size: int, timing, stats: list[dict],
                 quality: dict) -> dict:
    """Everything measured, keyed for JSON; ``stats`` holds one dict per rank."""
    world = len(stats)
    images = max(timing.images, 1)
    batches = len(batch_sizes(timing.images, cfg.batch))
    breakdown = breakdowns(stats, batches)
    image_bytes = 3 * image_size * image_size
    logit_bytes = spec.num_classes * 4
    if cfg.mode == "branch":
        per_point = [sum(col) / images for col in zip(*(s["sent_bytes_per_point"] for s in stats))]
        fp32 = sum(sum(s["fp32_bytes_per_point"]) for s in stats) / images
        input_bytes, result_bytes = image_bytes * (world - 1), logit_bytes * (world - 1)
    elif cfg.mode == "pipeline":
        per_point, fp32 = list(map(float, stats[0]["cut_bytes_per_image"])), None
        input_bytes, result_bytes = 0, logit_bytes if world > 1 else 0
    else:  # single, data: only inputs and logits move (data: all but rank 0's share)
        per_point, fp32 = [], None
        input_bytes, result_bytes = image_bytes * (world - 1) / world, logit_bytes * (world - 1) / world
    report = {
        "model": spec.name,
        "groups": spec.groups,
        "width": spec.width,
        "stem": spec.stem,
        "mode": cfg.mode,
        "devices": world,
        "placement": placement,
        "batch": cfg.batch,
        "overlap": cfg.overlap,
        "exchange_dtype": cfg.exchange_dtype,
        "image_size": image_size,
        "images": timing.images,
        "warmup": cfg.warmup,
        "checkpoint": cfg.checkpoint,
        "latency_ms": percentiles_ms(timing.latency_s),
        "throughput_ips": timing.images / timing.busy_s if timing.busy_s else 0.0,
        "bytes_per_image": sum(per_point),
        "bytes_per_image_per_point": per_point,
        "bytes_saved_vs_fp32": (1 - sum(per_point) / fp32) if fp32 else 0.0,
        "input_bytes_per_image": input_bytes,
        "result_bytes_per_image": result_bytes,
        "params_per_rank": [s["param_bytes"] for s in stats],
        "peak_rss_per_rank": [s["peak_rss_bytes"] for s in stats],
        "compute_s_per_rank": [(sum(b.segments_ms) + b.head_ms) * batches / 1e3 for b in breakdown],
        "comm_wait_s_per_rank": [(b.peer_wait_ms + b.wire_ms) * batches / 1e3 for b in breakdown],
        "pack_s_per_rank": [(b.pack_ms + b.codec_ms) * batches / 1e3 for b in breakdown],
        "breakdown_per_rank": [dataclasses.asdict(b) for b in breakdown],
        "threads_per_rank": [s["threads"] for s in stats],
        "cores_per_rank": [s["cores"] for s in stats],
        "hosts": sorted({s["host"] for s in stats}),
        "collectives_per_batch": [s["collectives_per_batch"] for s in stats],
        **quality,
    }
    if cfg.mode == "pipeline":
        report["pipeline_stages"] = stats[0]["pipeline_stages"]
    return report


def write_report(cfg: InferConfig, spec: ModelSpec, placement, image_size: int, timing, stats: list[dict],
                 quality: dict) -> dict:
    """Build the report and write it: JSON, TensorBoard (``<log_dir>/<run>``) and the console."""
    report = build_report(cfg, spec, placement, image_size, timing, stats, quality)
    if cfg.log_dir:
        report["run_dir"] = str(Path(cfg.log_dir) / run_name(report))
        _log_tensorboard(report, timing.latency_s)
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report), flush=True)
    return report


def run_name(report: dict) -> str:
    overlap = f"-k{report['overlap']}" if report["overlap"] > 1 else ""
    return (f"{report['model']}-g{report['groups']}-x{report['width']:g}-{report['mode']}-d{report['devices']}"
            f"-b{report['batch']}-{report['exchange_dtype']}{overlap}-{time.strftime('%Y%m%d-%H%M%S')}")


def _log_tensorboard(report: dict, latency_s: list[float]) -> None:
    log = make_logger(report["run_dir"])
    step = report["batch"]
    for i, t in enumerate(latency_s):
        log.scalar("infer/batch_latency_ms", t * 1e3, i)
    metrics = {
        "infer/latency_p50_ms": report["latency_ms"]["p50"],
        "infer/latency_p95_ms": report["latency_ms"]["p95"],
        "infer/latency_p99_ms": report["latency_ms"]["p99"],
        "infer/throughput_ips": report["throughput_ips"],
        "infer/bytes_per_image": report["bytes_per_image"],
        "infer/params_per_device_mb": max(report["params_per_rank"]) / _MB,
        "infer/peak_rss_mb": max(report["peak_rss_per_rank"]) / _MB,
    }
    for key in ("top1", "top5", "top1_agreement", "max_abs_diff", "max_rel_diff"):
        if key in report:
            metrics[f"infer/{key}"] = report[key]
    log.scalars(metrics, step)
    for r, b in enumerate(report["breakdown_per_rank"]):  # where each rank's time went, ms per batch
        parts = {f"breakdown/rank{r}/segment{i}_ms": t for i, t in enumerate(b["segments_ms"])}
        parts.update({f"breakdown/rank{r}/{k}": v for k, v in b.items() if k != "segments_ms"})
        log.scalars(parts, step)
    hparams = {k: report[k] for k in ("model", "groups", "width", "mode", "devices", "batch", "exchange_dtype",
                                      "overlap")}
    log.hparams(hparams, metrics)
    log.text("infer/report", "```\n" + json.dumps(report, indent=2) + "\n```")
    log.close()


def format_table(report: dict) -> str:
    """The console summary: the run, its numbers, and one row per rank."""
    lat = report["latency_ms"]
    rows = [
        ("run", f"{report['model']} G{report['groups']} x{report['width']:g} {report['stem']} stem, "
                f"mode {report['mode']}, {report['devices']} device(s), batch {report['batch']}, "
                f"overlap {report['overlap']}, exchange {report['exchange_dtype']}"),
        ("images", f"{report['images']} of {report['image_size']}x{report['image_size']} "
                   f"(+{report['warmup']} warm-up steps, not timed)"),
        ("latency / batch", f"p50 {lat['p50']:.2f} ms  p95 {lat['p95']:.2f} ms  p99 {lat['p99']:.2f} ms"),
        ("throughput", f"{report['throughput_ips']:.1f} images/s"),
        ("bytes / image", f"{report['bytes_per_image']:,.0f} activations "
                          f"({', '.join(f'{b:,.0f}' for b in report['bytes_per_image_per_point']) or '-'}), "
                          f"{report['input_bytes_per_image']:,.0f} input, {report['result_bytes_per_image']:,.0f}"
                          f" logits"),
    ]
    if report["bytes_saved_vs_fp32"]:
        rows.append(("saved vs fp32", f"{report['bytes_saved_vs_fp32'] * 100:.1f}% of the activation bytes"))
    if "top1_agreement" in report:
        rows.append(("vs monolithic", f"max |dlogit| {report['max_abs_diff']:.2e} "
                                      f"({report['max_rel_diff']:.1e} of the largest logit), "
                                      f"top-1 agreement {report['top1_agreement'] * 100:.2f}%"))
    if "top1" in report:
        rows.append(("accuracy", f"top-1 {report['top1']:.2f}%  top-5 {report['top5']:.2f}%"))
    if "run_dir" in report:
        rows.append(("tensorboard", report["run_dir"]))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append(f"{'rank':>4} {'params MB':>10} {'peak RSS MB':>12} {'threads':>8} {'cores':>8}   "
                 "ms per batch: step = segments + head + normalize + pack + codec + peer wait + wire + other")
    for r, b in enumerate(report["breakdown_per_rank"]):
        cores = ",".join(map(str, report["cores_per_rank"][r]))
        segments = "+".join(f"{t:.1f}" for t in b["segments_ms"])
        lines.append(
            f"{r:>4} {report['params_per_rank'][r] / _MB:>10.2f} {report['peak_rss_per_rank'][r] / _MB:>12.1f} "
            f"{report['threads_per_rank'][r]:>8} {cores:>8}   {b['step_ms']:.1f} = ({segments}) + {b['head_ms']:.2f} "
            f"+ {b['normalize_ms']:.2f} + {b['pack_ms']:.2f} + {b['codec_ms']:.2f} + {b['peer_wait_ms']:.2f} "
            f"+ {b['wire_ms']:.2f} + {b['other_ms']:.2f}"
        )
    return "\n".join(lines)
