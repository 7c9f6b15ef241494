"""The run's report: one :class:`~decnn.common.record.RunRecord`, written as JSON (``--out``), to TensorBoard and as a
console table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from decnn.common.record import MB, Latency, RunRecord, format_table
from decnn.common.tensorboard import log_run
from decnn.common.timing import breakdowns, percentiles_ms
from decnn.inference.inputs import batch_sizes
from decnn.inference.settings import InferConfig
from decnn.inference.spec import ModelSpec
from decnn.wire.spatial import SPATIAL_MODES


def build_report(cfg: InferConfig, spec: ModelSpec, placement, image_size: int, timing, stats: list[dict],
                 quality: dict) -> RunRecord:
    """Everything measured; ``stats`` holds one dict per rank."""
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
    elif cfg.mode in SPATIAL_MODES:  # the halos of the steps at which devices exchange, and the pooled tiles
        per_point = [b for b in (sum(col) / images for col in zip(*(s["sent_bytes_per_point"] for s in stats))) if b]
        fp32 = sum(per_point)
        input_bytes = image_bytes * (world - 1)
        result_bytes = stats[0]["pooled_bytes_per_image"] * (world - 1)
    elif cfg.mode == "pipeline":
        per_point, fp32 = list(map(float, stats[0]["cut_bytes_per_image"])), None
        input_bytes, result_bytes = 0, logit_bytes if world > 1 else 0
    else:  # single, data: only inputs and logits move (data: all but rank 0's share)
        per_point, fp32 = [], None
        input_bytes, result_bytes = image_bytes * (world - 1) / world, logit_bytes * (world - 1) / world
    return RunRecord(
        model=spec.name,
        groups=spec.groups,
        width=spec.width,
        stem=spec.stem,
        mode=cfg.mode,
        devices=world,
        placement=placement,
        batch=cfg.batch,
        overlap=cfg.overlap,
        exchange_dtype=cfg.exchange_dtype,
        backend=cfg.backend,
        transport=("nccl" if cfg.device == "cuda" else "gloo") if world > 1 else None,
        image_size=image_size,
        images=timing.images,
        warmup=cfg.warmup,
        checkpoint=cfg.checkpoint,
        latency_ms=Latency(**percentiles_ms(timing.latency_s)),
        throughput_ips=timing.images / timing.busy_s if timing.busy_s else 0.0,
        bytes_per_image=sum(per_point),
        bytes_per_image_per_point=per_point,
        exchanges_per_batch=sum(1 for b in per_point if b),
        bytes_saved_vs_fp32=(1 - sum(per_point) / fp32) if fp32 else 0.0,
        input_bytes_per_image=input_bytes,
        result_bytes_per_image=result_bytes,
        params_per_device_mb=max(s["param_bytes"] for s in stats) / MB,
        peak_rss_mb=max(s["peak_rss_bytes"] for s in stats) / MB,
        params_per_rank=[s["param_bytes"] for s in stats],
        peak_rss_per_rank=[s["peak_rss_bytes"] for s in stats],
        compute_s_per_rank=[(sum(b.segments_ms) + b.head_ms) * batches / 1e3 for b in breakdown],
        comm_wait_s_per_rank=[(b.peer_wait_ms + b.wire_ms) * batches / 1e3 for b in breakdown],
        pack_s_per_rank=[(b.pack_ms + b.codec_ms) * batches / 1e3 for b in breakdown],
        breakdown_per_rank=[dataclasses.asdict(b) for b in breakdown],
        threads_per_rank=[s["threads"] for s in stats],
        cores_per_rank=[s["cores"] for s in stats],
        hosts=sorted({s["host"] for s in stats}),
        collectives_per_batch=[s["collectives_per_batch"] for s in stats],
        pipeline_stages=stats[0]["pipeline_stages"] if cfg.mode == "pipeline" else None,
        **(spec.trained or {}),
        **quality,
    )


def write_report(cfg: InferConfig, spec: ModelSpec, placement, image_size: int, timing, stats: list[dict],
                 quality: dict) -> RunRecord:
    """Build the report and write it: JSON, TensorBoard (``<log_dir>/<run>``) and the console."""
    report = build_report(cfg, spec, placement, image_size, timing, stats, quality)
    if cfg.log_dir:
        report = log_run(report, timing.latency_s, cfg.log_dir)
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(format_table(report), flush=True)
    return report
