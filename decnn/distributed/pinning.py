"""Threads and cores per process: each local process gets its share, pinned where there are enough cores."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["configure_threads", "threads_and_cores_restored"]


def configure_threads(local_rank: int, local_world_size: int, threads: int | None, pin: bool) -> list[int]:
    """Give this process its share of the cores as torch threads (``threads`` overrides the count);
    ``pin`` binds the process to that many cores of its own, if there are enough for every local process.

    Returns the cores the process may run on.
    """
    cores = sorted(os.sched_getaffinity(0))
    per = threads or max(1, len(cores) // local_world_size)
    mine = cores[local_rank * per:(local_rank + 1) * per]
    torch.set_num_threads(per)
    if pin and len(mine) == per:  # pinning only where every process gets cores of its own
        os.sched_setaffinity(0, mine)
        return mine
    return cores


@contextmanager
def threads_and_cores_restored() -> Iterator[None]:
    """Give this process back its torch threads and cores on exit: a run in the caller's own process (mode
    single, or a group of one) must not leave the caller, and every process it starts later, on one core."""
    threads, cores = torch.get_num_threads(), os.sched_getaffinity(0)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        os.sched_setaffinity(0, cores)
