"""What the single-branch measurements (``kernels``, ``onnx_vs_torch``) share: one pinned thread, and a median."""

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
