"""Where a rank's time goes, and what a run measures of itself: shared by every runtime, none needing torch.

A :class:`Clock` splits a rank's time into named parts (each segment's compute, normalisation, pack/unpack,
the codec) and timestamps every collective: when it was started, when the rank began to wait for it and
when it completed. Matching those timestamps across ranks (:func:`breakdowns`) separates the time a rank
waited because a peer had not yet started the collective from the time the data took once both had.
Both the PyTorch modes and the device runtime (ONNX Runtime + MPI) use it, so their reports read alike.
"""

from __future__ import annotations

import resource
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Pending(Protocol):
    """A collective in flight (a torch.distributed work handle, an MPI request behind a deadline)."""

    def wait(self): ...


@dataclass(frozen=True)
class Event:
    """One collective on one rank: ``key`` names it alike on every rank that takes part."""

    key: str
    started: float  # issued (perf_counter: one clock for every process of a host)
    waited: float  # the rank began to wait for it
    done: float


WAIT_CPU = "wait cpu"  # the Clock's part that holds the CPU time spent in waits (within their wall time)


class Timed:
    """A pending collective whose wait is recorded on a :class:`Clock`."""

    def __init__(self, clock: Clock, pending: Pending, key: str, started: float):
        self.clock, self.pending, self.key, self.started = clock, pending, key, started

    def wait(self):
        """Wait for the collective; returns what its own ``wait`` returns."""
        waited, cpu = time.perf_counter(), time.process_time()
        with self.clock.range(f"wait {self.key.split('#')[0]}"):
            value = self.pending.wait()
        # The whole process's CPU time, so that a backend's own threads count: a wait that spins spends it.
        self.clock.seconds[WAIT_CPU] += time.process_time() - cpu
        self.clock.events.append(Event(self.key, self.started, waited, time.perf_counter()))
        return value


class Clock:
    """Seconds per named part and every collective's timestamps, since the last :meth:`reset`."""

    def __init__(self):
        self.ranges = False  # also mark each part as a torch.profiler range (``--trace``)
        self.reset()

    def reset(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.events: list[Event] = []
        self._issued: defaultdict[str, int] = defaultdict(int)

    def range(self, name: str) -> AbstractContextManager:
        """A torch.profiler range named ``name`` while tracing; nothing otherwise (a range costs ~16 us even
        with no profiler running, ~0.4 ms per batch-1 image of a split run)."""
        if not self.ranges:
            return nullcontext()
        from torch.profiler import record_function  # only the PyTorch runtime traces

        return record_function(name)

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Time the block as ``name`` (while tracing also a profiler range, so it shows in ``--trace``)."""
        start = time.perf_counter()
        with self.range(name):
            yield
        self.seconds[name] += time.perf_counter() - start

    def issue(self, what: str, start: callable) -> Timed:
        """Start a collective (``start()`` returns its Pending) under the key ``what#n`` (n-th of its kind)."""
        key = f"{what}#{self._issued[what]}"
        self._issued[what] += 1
        started = time.perf_counter()
        return Timed(self, start(), key, started)

    def stats(self) -> dict:
        return {"seconds": dict(self.seconds), "events": [tuple(vars(e).values()) for e in self.events]}


class ExchangeCounters:
    """``reset_stats`` and ``rank_stats`` of a split mode whose ``exchanges[point][slot]`` count the bytes they
    send (``sent_bytes``) and what fp32 would have taken (``sent_fp32_bytes``): both runtimes' branch modes."""

    clock: Clock
    exchanges: list[list]

    def reset_stats(self) -> None:
        """Start counting afresh (after the warm-up)."""
        self.clock.reset()
        for e in (e for slots in self.exchanges for e in slots):
            e.sent_bytes, e.sent_fp32_bytes = 0, 0

    def rank_stats(self) -> dict:
        return {
            "sent_bytes_per_point": [sum(e.sent_bytes for e in slots) for slots in self.exchanges],
            "fp32_bytes_per_point": [sum(e.sent_fp32_bytes for e in slots) for slots in self.exchanges],
        }


@dataclass(frozen=True)
class RankBreakdown:
    """Where one rank's time went, in milliseconds per timed batch.

    ``segments_ms`` is each segment's compute (the stem counts with segment 0; a pipeline stage has one
    entry), ``peer_wait_ms`` the time blocked in a collective before the last rank had started it, and
    ``wire_ms`` the time blocked after that (the transfer itself); ``other_ms`` is the step time no part
    accounts for (Python, launching collectives, the reduce of the logits on the other ranks).
    ``wait_cpu_ms`` is the CPU time the process spent during peer wait and wire: near 0 where waits block.
    """

    step_ms: float
    segments_ms: list[float]
    head_ms: float
    normalize_ms: float
    pack_ms: float
    codec_ms: float
    peer_wait_ms: float
    wire_ms: float
    other_ms: float
    wait_cpu_ms: float


def breakdowns(stats: list[dict], batches: int) -> list[RankBreakdown]:
    """Every rank's breakdown from the ranks' ``Clock.stats()`` plus ``step_s`` (their summed step times)."""
    events = [[Event(*e) for e in s["events"]] for s in stats]
    last_start: dict[str, float] = {}
    for rank_events in events:
        for e in rank_events:
            last_start[e.key] = max(last_start.get(e.key, e.started), e.started)
    out = []
    n = max(batches, 1)
    for s, rank_events in zip(stats, events):
        sec = s["seconds"]
        peer = wire = 0.0
        for e in rank_events:
            blocked = e.done - e.waited
            late = min(max(last_start[e.key] - e.waited, 0.0), blocked)
            peer, wire = peer + late, wire + blocked - late
        segments = [sec[k] for k in sorted((k for k in sec if k.startswith("segment ")), key=lambda k: int(k[8:]))]
        parts = [sum(segments), sec.get("head", 0.0), sec.get("normalize", 0.0), sec.get("pack", 0.0),
                 sec.get("codec", 0.0), peer, wire]
        out.append(RankBreakdown(
            step_ms=1e3 * s["step_s"] / n,
            segments_ms=[1e3 * t / n for t in segments],
            head_ms=1e3 * parts[1] / n,
            normalize_ms=1e3 * parts[2] / n,
            pack_ms=1e3 * parts[3] / n,
            codec_ms=1e3 * parts[4] / n,
            peer_wait_ms=1e3 * peer / n,
            wire_ms=1e3 * wire / n,
            other_ms=1e3 * (s["step_s"] - sum(parts)) / n,
            wait_cpu_ms=1e3 * sec.get(WAIT_CPU, 0.0) / n,
        ))
    return out


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """p50/p95/p99 and mean of durations given in seconds, in milliseconds (linear interpolation)."""
    if not seconds:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "mean": float("nan")}
    t = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p95, p99 = np.quantile(t, [0.5, 0.95, 0.99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(t.mean())}


def reset_peak_rss() -> None:
    """Start the peak-RSS count afresh (Linux), so that it covers inference rather than model loading."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # elsewhere the peak covers the whole process


def peak_rss_bytes() -> int:
    """This process's peak RSS: VmHWM on Linux (ru_maxrss survives exec, so a child would report its
    parent's peak), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
