"""An inference run in TensorBoard: its HPARAMS row, per-batch latency and each rank's breakdown (no torch:
the PyTorch runtime and the device runtime log alike)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from decnn.common.logger import experiment_root, make_logger
from decnn.common.record import RunRecord


def run_name(r: RunRecord) -> str:
    overlap = f"-k{r.overlap}" if r.overlap > 1 else ""
    runtime = "".join(f"-{v}" for v in (r.backend, r.transport) if v and v not in ("torch", "gloo", "nccl"))
    return (f"{r.model}-g{r.groups}-x{r.width:g}-{r.mode}-d{r.devices}-b{r.batch}-{r.exchange_dtype}{overlap}"
            f"{runtime}-{time.strftime('%Y%m%d-%H%M%S')}")


def log_run(report: RunRecord, latency_s: list[float], log_dir: str | Path) -> RunRecord:
    """Log ``report`` under ``log_dir/<run name>`` (its HPARAMS row, per-batch latency, each rank's breakdown,
    the record as text); returns it with that ``run_dir``."""
    report = dataclasses.replace(report, run_dir=str(Path(log_dir) / run_name(report)))
    log = make_logger(report.run_dir, log_root=experiment_root(log_dir))
    for i, t in enumerate(latency_s):
        log.scalar("infer/batch_latency_ms", t * 1e3, i)
    hparams, metrics = report.tensorboard()
    log.scalars(metrics, report.batch)
    for rank, b in enumerate(report.breakdown_per_rank or []):  # where each rank's time went, ms per batch
        parts = {f"breakdown/rank{rank}/segment{i}_ms": t for i, t in enumerate(b["segments_ms"])}
        parts.update({f"breakdown/rank{rank}/{k}": v for k, v in b.items() if k != "segments_ms"})
        log.scalars(parts, report.batch)
    log.hparams(hparams, metrics)
    log.text("infer/report", "```\n" + json.dumps(report.to_dict(), indent=2) + "\n```")
    log.close()
    return report
