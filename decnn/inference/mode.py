"""What every way of running a model across the ranks implements, and where a rank's time goes.

A :class:`Mode` (single, data, branch, pipeline) owns the prepared module this rank runs and a ``step``
that runs a list of uint8 batches across the ranks. It needs nothing of the timed loop: the runner and a
persistent runtime call the same ``step``.

A :class:`Clock` splits a rank's time into named parts (each segment's compute, normalisation, pack/unpack,
the codec) and timestamps every collective: when it was started, when the rank began to wait for it and
when it completed. Matching those timestamps across ranks (:func:`breakdowns`) separates the time a rank
waited because a peer had not yet started the collective from the time the data took once both had.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.profiler import record_function

from decnn.distributed.communicator import Pending


class Mode(Protocol):
    """One rank's part of a run."""

    batches_per_step: int  # how many batches one ``step`` takes
    module: nn.Module  # the prepared module this rank runs (its branch, its stage, or the whole model)
    clock: Clock

    def step(self, inputs: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """Run uint8 batches (meaningful on rank 0; same-shaped buffers elsewhere); logits on rank 0."""

    def reset_stats(self) -> None:
        """Start counting afresh (after the warm-up): the clock and the mode's own counters."""

    def rank_stats(self) -> dict:
        """The mode's own counters for the report (bytes sent and the like)."""


@dataclass(frozen=True)
class Event:
    """One collective on one rank: ``key`` names it alike on every rank that takes part."""

    key: str
    started: float  # issued (perf_counter: one clock for every process of a host)
    waited: float  # the rank began to wait for it
    done: float


class Timed:
    """A pending collective whose wait is recorded on a :class:`Clock`."""

    def __init__(self, clock: Clock, pending: Pending, key: str, started: float):
        self.clock, self.pending, self.key, self.started = clock, pending, key, started

    def wait(self) -> None:
        waited = time.perf_counter()
        with self.clock.range(f"wait {self.key.split('#')[0]}"):
            self.pending.wait()
        self.clock.events.append(Event(self.key, self.started, waited, time.perf_counter()))


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
        return record_function(name) if self.ranges else nullcontext()

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


@dataclass(frozen=True)
class RankBreakdown:
    """Where one rank's time went, in milliseconds per timed batch.

    ``segments_ms`` is each segment's compute (the stem counts with segment 0; a pipeline stage has one
    entry), ``peer_wait_ms`` the time blocked in a collective before the last rank had started it, and
    ``wire_ms`` the time blocked after that (the transfer itself); ``other_ms`` is the step time no part
    accounts for (Python, launching collectives, the reduce of the logits on the other ranks).
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
        ))
    return out
