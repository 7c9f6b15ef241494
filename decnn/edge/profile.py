"""The cost model's prediction of a run on devices without torch, from parts measured where it runs
(``decnn edge ... --predict``): before the timed run, every rank times each step of its part with a transport
that moves nothing (all ranks at once, as in the run), and every ordered pair of ranks measures its link with an
MPI ping-pong (a few bytes: the latency; a large block: the bandwidth). :func:`decnn.common.costmodel.lockstep`
joins them: per step the slowest rank, then the exchange's bytes over the measured links.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections import Counter

import numpy as np

from decnn.common.costmodel import Prediction, lockstep
from decnn.edge.branches import EdgeSplit
from decnn.edge.bundle import DeviceBundle
from decnn.edge.numpy_codecs import make_codec
from decnn.edge.spatial import EdgeSpatial
from decnn.edge.transport import MpiComm
from decnn.execution.messages import Then

_REPEATS = 5
_SMALL, _LARGE = 64, 1 << 20
_BURST_PROBE, _IDLE_S = 256 * 1024, 0.05  # a mid-sized message after 50 ms idle: what a token bucket saved up
_PING, _PONG = 3, 4  # MPI tags of their own


class _Idle:
    def wait(self) -> None:
        pass


class _NoWire:
    """A transport (and a communicator, for DeCNN's branches) that moves nothing; what would arrive is zeros."""

    def __init__(self, rank: int, size: int):
        self.rank, self.size, self.counts = rank, size, Counter()

    def exchange(self, sends: list, receives: list) -> _Idle:
        for array, _, _ in receives:
            array[...] = 0
        return _Idle()

    def broadcast(self, array, root: int) -> _Idle:
        return _Idle()

    bcast = broadcast

    def reduce_sum(self, array, root: int) -> Then:
        return Then(_Idle(), lambda: array)

    def reduce(self, send, recv, root: int = 0) -> _Idle:
        if recv is not None:
            recv[...] = send
        return _Idle()

    def alltoallv(self, send, send_counts, recv, recv_counts, what: str = "") -> _Idle:
        recv[...] = 0
        return _Idle()


def _timed(graphs: list, ends: list[float]) -> list:
    """``graphs`` that note when each call ends."""
    def wrap(g):
        def call(*args):
            out = g(*args)
            ends.append(time.perf_counter())
            return out
        return call
    return [wrap(g) for g in graphs]


def time_steps(split: EdgeSplit | EdgeSpatial, inputs: list[np.ndarray], repeats: int = _REPEATS) -> list[float]:
    """Seconds of each step of ``split``'s part with nothing on the wire (from one graph's end to the next one's:
    packing and compute), the head and the tail last; ``split`` is this rank's split, rebuilt on no wire."""
    wire = _NoWire(split.comm.rank if isinstance(split, EdgeSplit) else split.transport.rank,
                   split.comm.size if isinstance(split, EdgeSplit) else split.program.devices)
    ends: list[float] = []
    if isinstance(split, EdgeSplit):
        timed = copy.copy(split.bundle)
        timed.segments = _timed(split.bundle.segments, ends)
        dry = EdgeSplit(timed, wire, split.codec, 1)
    else:
        dry = EdgeSpatial(split.bundle, wire, split.tiling)
        dry.pieces = _timed(split.pieces, ends)
    runs = []
    for r in range(repeats + 1):  # the first is a warm-up
        ends.clear()
        start = time.perf_counter()
        dry.step(inputs)
        if r:
            runs.append([b - a for a, b in zip([start, *ends], [*ends, time.perf_counter()])])
    return [statistics.median(t) for t in zip(*runs)]


def time_branch(bundle: DeviceBundle, inputs: list[np.ndarray], repeats: int = _REPEATS) -> list[float]:
    """:func:`time_steps` of ``bundle``'s branch on its own, before any MPI job: what the device that holds its
    groups computes per step (``decnn plan --hosts`` times each board so)."""
    wire = _NoWire(bundle.device, len(bundle.placement))
    return time_steps(EdgeSplit(bundle, wire, make_codec("fp32")), inputs, repeats)


def measure_links(comm: MpiComm) -> tuple[list[list[float]], list[list[float]], list[float]]:
    """Per ordered pair (i, j): the one-way latency of a small message and the bandwidth of a large one
    (bytes/s), from ping-pongs; per rank the burst its link lets through at once after an idle spell (what a
    token bucket shaping it saved up: a mid-sized message after a pause, against the rate). Every rank takes
    part in every pair's turn."""
    n = comm.size
    table = np.zeros((3, n, n))  # latency, rate, burst; rank i fills row i (it times its pings)
    small, large, reply = np.zeros(_SMALL, np.uint8), np.zeros(_LARGE, np.uint8), np.zeros(_SMALL, np.uint8)
    for i in range(n):
        for j in range(n):
            if i != j:
                small_s, large_s = _ping(comm, i, j, small, reply, 5), _ping(comm, i, j, large, reply, 3)
                rate = (_LARGE - _SMALL) / max(large_s - small_s, 1e-9)
                table[:2, i, j] = small_s / 2, rate
                if j == (i + 1) % n:  # a link's bucket is its sender's: one receiver tells it
                    after_idle = _ping(comm, i, j, large[:_BURST_PROBE], reply, 3, pause=_IDLE_S)
                    table[2, i, j] = min(max(_BURST_PROBE - (after_idle - small_s) * rate, 0.0), _BURST_PROBE)
    rows = comm.gather_object(table[:, comm.rank])
    if comm.rank == 0:
        table = np.stack(rows, axis=1)
    comm.bcast(table, 0).wait()
    return table[0].tolist(), table[1].tolist(), [max(row) for row in table[2].tolist()]


def _ping(comm: MpiComm, i: int, j: int, message: np.ndarray, reply: np.ndarray, repeats: int,
          pause: float = 0.0) -> float:
    """Median of ``repeats`` round trips of ``message`` from i to j and a small reply back, as rank i sees them
    (each after ``pause`` seconds of an idle link); 0 on other ranks."""
    times = []
    for _ in range(repeats):
        comm.barrier()
        time.sleep(pause)
        if comm.rank == i:
            start = time.perf_counter()
            comm.send(message, j, _PING).wait()
            comm.recv(reply, j, _PONG).wait()
            times.append(time.perf_counter() - start)
        elif comm.rank == j:
            comm.recv(message, i, _PING).wait()
            comm.send(reply, i, _PONG).wait()
    return statistics.median(times) if times else 0.0


def sent_bytes(split: EdgeSplit | EdgeSpatial, batch: int) -> list[list[int]]:
    """The bytes this rank sends to each rank at each exchange of a batch (after a step has run)."""
    if isinstance(split, EdgeSplit):
        return [[n * e.itemsize for n in e.send_counts] for e in (slots[0] for slots in split.exchanges)]
    channels = [c for c, _, _ in split.bundle.layout.shapes]
    return [[sum(x.part.rows * x.part.cols * channels[x.tensor] * 4 * batch for x in step.sends if x.dst == d)
             for d in range(split.program.devices)] for step in split.program.steps]


def predict(compute: list[list[float]], sent: list[list[list[float]]], latency: list[list[float]],
            rate: list[list[float]], input_bytes: float, result_bytes: float, burst: list[float] | None = None
            ) -> Prediction:
    """The run's step from every rank's step times (the head last), the bytes of each exchange (``sent[s][i][j]``
    from rank i to j; compute and exchanges alternate) and the links."""
    n = len(compute)
    sent = sent + [[[0] * n for _ in range(n)]] * (len(compute[0]) - 1 - len(sent))
    broadcast = max((latency[0][j] + input_bytes / rate[0][j] for j in range(1, n)), default=0.0)
    reduce = max((latency[j][0] + result_bytes / rate[j][0] for j in range(1, n)), default=0.0)
    return lockstep(compute, sent, latency, rate, broadcast, reduce, burst)


def predict_run(split: EdgeSplit | EdgeSpatial, inputs: list[np.ndarray], comm: MpiComm, result_bytes: int
                ) -> Prediction | None:
    """Profile this rank's part and the links (every rank takes part), then predict a step of ``inputs`` on
    rank 0 (None elsewhere); ``result_bytes``: what each rank's reduce carries per batch."""
    compute = time_steps(split, inputs)
    sent = sent_bytes(split, sum(len(x) for x in inputs))
    latency, rate, burst = measure_links(comm)
    parts = comm.gather_object((compute, sent))
    if comm.rank != 0:
        return None
    matrices = [[row[s] for _, row in parts] for s in range(len(parts[0][1]))]  # [s][i][j]
    return predict([c for c, _ in parts], matrices, latency, rate, inputs[0].nbytes, result_bytes, burst)
