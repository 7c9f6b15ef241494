"""What the single-branch measurements (``kernels``, ``onnx_vs_torch``, ``quantized``) share: one pinned thread,
a median, a branch run without its exchange, and interleaved rounds."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

from decnn.inference.optimize import keep_freed_memory


def one_pinned_thread() -> None:
    """Measure as a 1-thread device does: one torch thread, this process on one core, freed memory kept."""
    torch.set_num_threads(1)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    keep_freed_memory()


def median_ms(fn: Callable[[torch.Tensor], object], x: torch.Tensor, iters: int) -> float:
    """The median of ``iters`` timed calls ``fn(x)``, in milliseconds."""
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def chain(branch, x: torch.Tensor) -> torch.Tensor:
    """A branch's segments in turn, then its head, without the exchange (it keeps the shapes)."""
    for i in range(len(branch.segments)):
        x = branch.segment(i, x)
    return branch.head(x)


def interleaved_rounds(branches: dict, inputs: dict[int, torch.Tensor], rounds: int, iters: int) -> list[dict]:
    """Each branch chained on each input, after one warm-up pass of each: every round times each batch size
    and branch in turn. One row per (branch, batch): the per-round medians, their median and spread."""
    runs = {(name, n): [] for n in inputs for name in branches}
    with torch.inference_mode():
        for branch in branches.values():
            for x in inputs.values():
                chain(branch, x)
        for _ in range(rounds):
            for n, x in inputs.items():
                for name, branch in branches.items():
                    runs[name, n].append(median_ms(lambda t, b=branch: chain(b, t), x, iters))
    return [{"backend": name, "batch": n, "median_ms": statistics.median(r), "min_ms": min(r), "max_ms": max(r),
             "rounds_ms": r} for (name, n), r in runs.items()]
