"""One rank's run: set up, warm up, time the batches, gather the stats, verify and report (rank 0).

Everything that can be wrong with the settings, the checkpoint or the dataset is found by
:func:`preflight` before the process group starts.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass, field

import torch

from decnn.comm import Communicator, configure_threads
from decnn.inference.baselines import DataMode, SingleMode
from decnn.inference.branch_mode import BranchMode
from decnn.inference.codec import make_codec
from decnn.inference.config import ConfigError, InferConfig
from decnn.inference.inputs import Normalize, SyntheticImages, ValImages, batch_sizes
from decnn.inference.metrics import agreement, param_bytes, peak_rss_bytes, reset_peak_rss, synced_time, topk_accuracy
from decnn.inference.optimize import keep_freed_memory, prepare_for_inference
from decnn.inference.report import write_report
from decnn.inference.spec import ModelSpec, resolve_model
from decnn.partition import extract_branch
from decnn.record import RunRecord

SYNTHETIC_IMAGES = 64
# Test-only fault injection: "RANK:STEP:exit" makes that rank exit at that timed step, ":hang" makes it hang.
FAULT_ENV = "DECNN_INJECT_FAULT"
_PROGRESS_EVERY_S = 5.0


@dataclass
class Timing:
    """Rank 0's view of the timed steps."""

    latency_s: list[float] = field(default_factory=list)  # per batch
    busy_s: float = 0.0  # sum of step times
    images: int = 0
    logits: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)


def open_inputs(cfg: InferConfig, spec: ModelSpec):
    """Rank 0's images: the val split for a checkpoint, synthetic ones for a random init."""
    if cfg.random_init:
        return SyntheticImages(cfg.num_images or SYNTHETIC_IMAGES, cfg.image_size or spec.input_size, cfg.seed)
    from decnn.data import DatasetNotFoundError

    try:
        return ValImages(cfg.data_root, cfg.num_images, spec.input_size)
    except DatasetNotFoundError as e:
        raise ConfigError(f"{e} (prepare it with `python -m decnn.data`, or pass --data-root)") from None


def preflight(cfg: InferConfig, rank: int = 0) -> tuple[ModelSpec, object]:
    """Check everything that can be checked without peers; returns the model spec and rank 0's inputs."""
    cfg.check()
    spec = resolve_model(cfg)
    if cfg.mode == "branch":
        spec.placement(cfg.placement, cfg.world_size)
    return spec, (open_inputs(cfg, spec) if rank == 0 else None)


def run_rank(cfg: InferConfig) -> RunRecord | None:
    """The whole run on this rank (the function every process runs); returns the report on rank 0."""
    rank = int(os.environ.get("RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    cores = configure_threads(int(os.environ.get("LOCAL_RANK", 0)), local_world, cfg.threads, cfg.pin_cores)
    keep_freed_memory()  # every mode alike, so that their timings compare fairly
    spec, source = preflight(cfg, rank)
    comm = Communicator(cfg.timeout, torch.device(cfg.device))
    try:
        return _run(cfg, comm, spec, source, cores)
    finally:
        comm.close()


def _build_mode(cfg: InferConfig, comm: Communicator, spec: ModelSpec, normalize: Normalize):
    """The mode object, the bytes of parameters this rank holds, and the placement (branch mode)."""
    model = spec.build(comm.device)
    if cfg.mode == "branch":
        placement = spec.placement(cfg.placement, comm.world_size)
        branch = extract_branch(model, placement, comm.rank).to(comm.device)
        del model  # this rank keeps its branch only
        held = param_bytes(branch)
        mode = BranchMode(prepare_for_inference(branch), comm, make_codec(cfg.exchange_dtype), normalize, cfg.overlap)
        return mode, held, placement.as_lists()
    held = param_bytes(model)
    if cfg.mode == "single":
        return SingleMode(prepare_for_inference(model), normalize), held, None
    if cfg.mode == "data":
        return DataMode(prepare_for_inference(model), comm, normalize), held, None
    return model, held, None  # pipeline: run_pipeline splits the model itself


def _run(cfg: InferConfig, comm: Communicator, spec: ModelSpec, source, cores: list[int]) -> RunRecord | None:
    shared = comm.broadcast_object((len(source), source.image_size) if comm.rank == 0 else None)
    num_images, image_size = shared
    normalize = Normalize(spec.mean, spec.std, comm.device)
    mode, held, placement = _build_mode(cfg, comm, spec, normalize)
    sizes = batch_sizes(num_images, cfg.batch)
    reset_peak_rss()
    if cfg.mode == "pipeline":
        timing, mode_stats = _run_pipeline(cfg, comm, mode, normalize, source, sizes)
        counts = {}
    else:
        timing, counts = _timed_steps(cfg, comm, mode, source, sizes, image_size)
        mode_stats = mode.rank_stats()
    stats = {
        "rank": comm.rank,
        "host": socket.gethostname(),
        "threads": torch.get_num_threads(),
        "cores": cores,
        "param_bytes": held,
        "peak_rss_bytes": peak_rss_bytes(),
        "comm_wait_s": comm.wait_s,
        "collectives_per_batch": counts,
        **mode_stats,
    }
    all_stats = comm.gather_object(stats)
    if comm.rank != 0:
        return None
    quality = _quality(cfg, spec, normalize, source, sizes, timing)
    return write_report(cfg, spec, placement, image_size, timing, all_stats, quality)


def _load(source, sizes: list[int], first: int, image_size: int, device: torch.device, rank: int):
    """A step's uint8 batches (rank 0 reads them, other ranks get buffers of the same shapes) and labels."""
    if rank != 0:
        return [torch.empty(n, 3, image_size, image_size, dtype=torch.uint8, device=device) for n in sizes], []
    start, images, labels = first, [], []
    for n in sizes:
        x, y = source.batch(start, n)
        images.append(x.to(device))
        if y is not None:
            labels.append(y)
        start += n
    return images, labels


def _timed_steps(cfg, comm, mode, source, sizes: list[int], image_size: int) -> tuple[Timing, dict]:
    """Warm up, then time every step; returns rank 0's timing and this rank's collectives per batch."""
    k = mode.batches_per_step
    steps = [sizes[i:i + k] for i in range(0, len(sizes), k)]
    firsts = [sum(sizes[:i]) for i in range(0, len(sizes), k)]
    inputs, _ = _load(source, steps[0], 0, image_size, comm.device, comm.rank)
    for _ in range(cfg.warmup):
        mode.step(inputs)
    mode.reset_stats()
    comm.wait_s, counts_before = 0.0, comm.counts.copy()
    timing, progress = Timing(), _Progress(sum(sizes), enabled=comm.rank == 0)
    for s, (step, first) in enumerate(zip(steps, firsts)):
        _inject_fault(comm.rank, s)
        inputs, labels = _load(source, step, first, image_size, comm.device, comm.rank)
        start = time.perf_counter()
        out = mode.step(inputs)
        elapsed = synced_time(comm.device) - start
        if comm.rank == 0:
            timing.latency_s += [elapsed] * len(step)
            timing.busy_s += elapsed
            timing.images += sum(step)
            timing.logits += [o.cpu() for o in out]
            timing.labels += labels
            progress.update(timing.images, timing.busy_s)
    counts = {k: (n - counts_before[k]) / len(sizes) for k, n in comm.counts.items() if n > counts_before[k]}
    return timing, counts


def _run_pipeline(cfg, comm, model, normalize, source, sizes: list[int]) -> tuple[Timing, dict]:
    """Mode pipeline: the layer-wise baseline of decnn.inference.pipeline_mode, on full batches only."""
    from decnn.inference.pipeline_mode import run_pipeline

    full = [n for n in sizes if n == cfg.batch]
    images, labels = [], []
    if comm.rank == 0:
        for i, n in enumerate(full):
            x, y = source.batch(i * n, n)
            images.append(normalize(x.to(comm.device)))
            if y is not None:
                labels.append(y)
    with torch.inference_mode():
        logits, stats = run_pipeline(model, images, microbatches=cfg.overlap, warmup=cfg.warmup)
    timing = Timing(labels=labels)
    if comm.rank == 0:
        timing.latency_s = list(stats["latency_s"])
        timing.busy_s = sum(stats["latency_s"])
        timing.images = stats["images"]
        timing.logits = list(logits.cpu().split(cfg.batch))
    mode_stats = {
        "compute_s": sum(stats["compute_s"]),
        "comm_wait_s": sum(stats["wait_s"]),  # communication and pipeline bubbles
        "sent_bytes": stats["sent_bytes"],
        "cut_bytes_per_image": stats["cut_bytes_per_image"],
        "pipeline_cuts": stats["stage_units"],
        "param_bytes": stats["param_bytes"],  # this rank's stage, not the whole model
    }
    return timing, mode_stats


def _quality(cfg, spec: ModelSpec, normalize, source, sizes, timing: Timing) -> dict:
    """Rank 0, after the timed run: top-1/top-5 with labels; with --verify, agreement with the whole model."""
    quality = {}
    if not timing.logits:
        return quality
    logits = torch.cat(timing.logits)
    if timing.labels:
        quality.update(topk_accuracy(logits, torch.cat(timing.labels)[: len(logits)]))
    if cfg.verify:
        reference_model = spec.build()
        refs, start = [], 0
        with torch.inference_mode():
            for n in sizes:
                if start >= len(logits):
                    break
                x, _ = source.batch(start, n)
                refs.append(reference_model(normalize(x)))
                start += n
        quality.update(agreement(logits, torch.cat(refs)))
    return quality


def _inject_fault(rank: int, step: int) -> None:
    """Test hook (``DECNN_INJECT_FAULT=RANK:STEP:exit|hang``): simulate a peer that dies or hangs."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    fault_rank, fault_step, kind = spec.split(":")
    if (int(fault_rank), int(fault_step)) == (rank, step):
        if kind == "exit":
            os._exit(17)
        time.sleep(3600)


class _Progress:
    """A line on stderr every few seconds: images done, throughput, time left."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.last = total, enabled, time.monotonic()

    def update(self, done: int, busy_s: float) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < _PROGRESS_EVERY_S:
            return
        self.last = now
        ips = done / busy_s if busy_s else 0.0
        eta = (self.total - done) / ips if ips else float("nan")
        print(f"[infer] {done}/{self.total} images, {ips:.1f} img/s, ~{eta:.0f} s left", file=sys.stderr, flush=True)
