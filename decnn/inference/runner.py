"""One rank's run: set up, warm up, time the batches, gather the stats, verify and report (rank 0).

Everything that can be wrong with the settings, the checkpoint or the dataset is found by
:func:`preflight` before the process group starts.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from decnn.common.errors import ConfigError
from decnn.common.record import RunRecord
from decnn.common.timing import Clock, peak_rss_bytes, reset_peak_rss
from decnn.common.verification import compare
from decnn.deploy.shards import read_manifest
from decnn.distributed.communicator import Communicator
from decnn.distributed.launcher import exit_with_launcher
from decnn.distributed.pinning import configure_threads, threads_and_cores_restored
from decnn.distributed.process import under_launcher
from decnn.emulation.faults import inject_fault
from decnn.inference.build import build_mode
from decnn.inference.inputs import Normalize, SyntheticImages, ValImages, batch_sizes
from decnn.inference.metrics import synced_time, topk_accuracy
from decnn.inference.mode import Mode
from decnn.inference.optimize import keep_freed_memory
from decnn.inference.report import write_report
from decnn.inference.settings import DEFAULT_DATA_ROOT, InferConfig
from decnn.inference.spec import ModelSpec, resolve_model
from decnn.wire.spatial import SPATIAL_MODES

SYNTHETIC_IMAGES = 64
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
        return ValImages(cfg.data_root or DEFAULT_DATA_ROOT, cfg.num_images, spec.input_size)
    except DatasetNotFoundError as e:
        raise ConfigError(f"{e} (prepare it with `decnn data`, or pass --data-root)") from None


def preflight(cfg: InferConfig, rank: int = 0) -> tuple[ModelSpec, object]:
    """Check everything that can be checked without peers; returns the model spec and rank 0's inputs."""
    cfg.check()
    spec = resolve_model(cfg)
    if cfg.mode == "branch":
        spec.placement(cfg.placement, cfg.world_size)
    if cfg.mode in SPATIAL_MODES:
        spec.check_tiling(cfg.tiling(cfg.world_size), cfg.image_size or spec.input_size)
    return spec, (open_inputs(cfg, spec) if rank == 0 else None)


def run_rank(cfg: InferConfig) -> RunRecord | None:
    """The whole run on this rank (the function every process runs); returns the report on rank 0 (its caller
    fails the run if it says ``verified: false``: decnn.common.verification.check)."""
    if under_launcher():
        exit_with_launcher()
    rank = int(os.environ.get("RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    with threads_and_cores_restored():
        cores = configure_threads(int(os.environ.get("LOCAL_RANK", 0)), local_world, cfg.threads, cfg.pin_cores)
        keep_freed_memory()  # every mode alike, so that their timings compare fairly
        spec, source = preflight(cfg, rank)
        inject_fault(rank, "setup")
        comm = Communicator(cfg.timeout, torch.device(cfg.device))
        try:
            return _run(cfg, comm, spec, source, cores)
        finally:
            comm.close()


def _run(cfg: InferConfig, comm: Communicator, spec: ModelSpec, source, cores: list[int]) -> RunRecord | None:
    shared = comm.broadcast_object((len(source), source.image_size) if comm.rank == 0 else None)
    num_images, image_size = shared
    normalize = Normalize(spec.mean, spec.std, comm.device)
    built = build_mode(cfg, comm, spec, normalize, image_size)
    mode, held, placement = built.mode, built.param_bytes, built.placement
    sizes = batch_sizes(num_images, cfg.batch)
    reset_peak_rss()
    timing, counts, step_s = _timed_steps(cfg, comm, mode, source, sizes, image_size)
    stats = {
        "rank": comm.rank,
        "host": socket.gethostname(),
        "threads": torch.get_num_threads(),
        "cores": cores,
        "param_bytes": held,
        "peak_rss_bytes": peak_rss_bytes(),
        "collectives_per_batch": counts,
        "step_s": step_s,
        **mode.clock.stats(),
        **mode.rank_stats(),
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


def _timed_steps(cfg, comm, mode: Mode, source, sizes: list[int], image_size: int) -> tuple[Timing, dict, float]:
    """Warm up, then time every step (every batch, the ragged last one too); returns rank 0's timing, this
    rank's collectives per batch and its summed step time."""
    k = mode.batches_per_step
    steps = [sizes[i:i + k] for i in range(0, len(sizes), k)]
    firsts = list(itertools.accumulate((sum(step) for step in steps[:-1]), initial=0))  # each step's first image
    inputs, _ = _load(source, steps[0], 0, image_size, comm.device, comm.rank)
    for _ in range(cfg.warmup):
        mode.step(inputs)
    mode.reset_stats()
    counts_before = comm.counts.copy()
    timing, progress = Timing(), _Progress(sum(sizes), enabled=comm.rank == 0)
    step_s = 0.0
    with _tracing(cfg.trace, comm.rank, mode.clock):
        for s, (step, first) in enumerate(zip(steps, firsts)):
            inject_fault(comm.rank, str(s))
            inputs, labels = _load(source, step, first, image_size, comm.device, comm.rank)
            start = time.perf_counter()
            out = mode.step(inputs)
            elapsed = synced_time(comm.device) - start
            step_s += elapsed
            if comm.rank == 0:
                timing.latency_s += [elapsed] * len(step)
                timing.busy_s += elapsed
                timing.images += sum(step)
                timing.logits += [o.cpu() for o in out]
                timing.labels += labels
                progress.update(timing.images, timing.busy_s)
    counts = {k: (n - counts_before[k]) / len(sizes) for k, n in comm.counts.items() if n > counts_before[k]}
    return timing, counts, step_s


@contextmanager
def _tracing(trace_dir: str | None, rank: int, clock: Clock) -> Iterator[None]:
    """With ``--trace DIR``: a torch.profiler Chrome trace of the timed steps, ``DIR/rank<r>.json``, with the
    clock's parts as named ranges."""
    if not trace_dir:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    clock.ranges = True
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            yield
    finally:
        clock.ranges = False
    Path(trace_dir).mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(Path(trace_dir) / f"rank{rank}.json"))


def _quality(cfg, spec: ModelSpec, normalize, source, sizes, timing: Timing) -> dict:
    """Rank 0, after the timed run: top-1/top-5 with labels; with --verify, the comparison with the whole model
    (decnn.common.verification)."""
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
        quantized = cfg.backend == "onnxruntime" and "quantization" in read_manifest(spec.checkpoint)
        quality.update(compare(logits.numpy(), torch.cat(refs).numpy(), cfg.exchange_dtype, quantized))
    return quality


class _Progress:
    """Lines on stderr: one when the timed loop starts, then one every few seconds (images done, throughput,
    time left)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.last = total, enabled, time.monotonic()
        if enabled:
            print(f"[infer] timing {total} images", file=sys.stderr, flush=True)

    def update(self, done: int, busy_s: float) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < _PROGRESS_EVERY_S:
            return
        self.last = now
        ips = done / busy_s if busy_s else 0.0
        eta = (self.total - done) / ips if ips else float("nan")
        print(f"[infer] {done}/{self.total} images, {ips:.1f} img/s, ~{eta:.0f} s left", file=sys.stderr, flush=True)
