"""MPI for the device runtime: non-blocking collectives behind a deadline, and the naming of a silent peer.

MPI's collectives wait forever by default. Every collective here is the non-blocking form, polled until
``timeout`` seconds have passed. A wait tests its request a few times, then sleeps between tests, the longer
the longer it has waited (a tenth of that, 50 us to 1 ms): MPI's own waits spin, and a rank that spins while
its peer computes spends a core, or an emulated board's CPU quota (decnn.emulation).

A rank whose collective times out tells every peer so on a communicator of its own, then listens for the same
report from them for a moment: the peers it did not hear from are the ones that died, hung, were stopped or
became unreachable, and the error names them with their hosts.
"""

from __future__ import annotations

import socket
import time
from collections import Counter

import numpy as np

from decnn.execution.messages import AllOf, Then

_REPORT_TAG = 77
_REPORT_GRACE_S = 1.0  # how long a rank that timed out waits for the other ranks' reports
_HOST_BYTES = 64
_SPIN_TESTS = 20  # tests before a wait starts to sleep: a collective about to complete costs no sleep
# Then a nap between tests of NAP_SHARE of the time waited so far, within [MIN, MAX]: it adds at most about
# that share to a wait, and a rank waiting long for a slow peer wakes up rarely (a sleep costs ~10 us of CPU).
_NAP_SHARE, _MIN_NAP_S, _MAX_NAP_S = 0.1, 50e-6, 1e-3


class PeerError(RuntimeError):
    """Peers (``silent``: their ranks) that did not answer a collective within the timeout."""

    def __init__(self, message: str, silent: list[int]):
        super().__init__(message)
        self.silent = silent


class Request:
    """A collective in flight; ``wait`` raises :class:`PeerError` once the deadline has passed. A request of
    mpi4py's pickle-based calls (``pickled``) returns its object."""

    def __init__(self, comm: MpiComm, request, what: str, pickled: bool = False):
        self.comm, self.request, self.what = comm, request, what
        self._test = request.test if pickled else lambda: (request.Test(), None)

    def wait(self):
        done, value = self._test()
        start = time.monotonic()
        tests = 1
        while not done:
            waited = time.monotonic() - start
            if waited > self.comm.timeout:
                self.comm.timed_out(self.what)
            if tests >= _SPIN_TESTS:
                time.sleep(min(max(waited * _NAP_SHARE, _MIN_NAP_S), _MAX_NAP_S))
            done, value = self._test()
            tests += 1
        return value


class MpiComm:
    """``COMM_WORLD`` with counted, deadline-bound collectives; ``hosts[r]`` is rank r's host."""

    def __init__(self, timeout: float):
        from mpi4py import MPI

        self.MPI, self.timeout = MPI, timeout
        self.world = MPI.COMM_WORLD
        self.rank, self.size = self.world.Get_rank(), self.world.Get_size()
        self.reports = self.world.Dup()  # timeout reports travel beside the data's collectives
        self.counts: Counter[str] = Counter()
        self.hosts = [socket.gethostname()] * self.size
        names = np.zeros((self.size, _HOST_BYTES), np.uint8)
        mine = np.frombuffer(socket.gethostname().encode()[:_HOST_BYTES], np.uint8)
        names[self.rank, : len(mine)] = mine
        Request(self, self.world.Iallgather(self.MPI.IN_PLACE, [names, self.MPI.BYTE]), "start-up").wait()
        self.hosts = [bytes(row).rstrip(b"\0").decode() for row in names]

    # -- collectives: each returns a Request --------------------------------------------------------------

    def bcast(self, buffer: np.ndarray, root: int = 0) -> Request:
        self.counts["broadcast"] += 1
        return Request(self, self.world.Ibcast(buffer, root=root), "broadcast")

    def alltoallv(self, send: np.ndarray, send_counts: list[int], recv: np.ndarray, recv_counts: list[int],
                  what: str = "all_to_all") -> Request:
        """Each rank sends ``send_counts[d]`` bytes of ``send`` (in rank order) to rank d and receives
        ``recv_counts[s]`` bytes from rank s into ``recv``, in rank order."""
        self.counts["all_to_all"] += 1
        byte = self.MPI.BYTE
        return Request(self, self.world.Ialltoallv([send, (send_counts, _offsets(send_counts)), byte],
                                                   [recv, (recv_counts, _offsets(recv_counts)), byte]), what)

    def send(self, buffer: np.ndarray, dst: int, tag: int) -> Request:
        """Point-to-point to rank ``dst`` (a spatial split's halo); messages under one tag arrive in order."""
        self.counts["send"] += 1
        return Request(self, self.world.Isend(buffer, dest=dst, tag=tag), f"send to rank {dst}")

    def recv(self, buffer: np.ndarray, src: int, tag: int) -> Request:
        """Point-to-point from rank ``src`` into ``buffer`` (the size of what it sends under ``tag``)."""
        self.counts["recv"] += 1
        return Request(self, self.world.Irecv(buffer, source=src, tag=tag), f"receive from rank {src}")

    def reduce(self, send: np.ndarray, recv: np.ndarray | None, root: int = 0) -> Request:
        """The elementwise sum of every rank's ``send`` into ``recv`` on ``root``."""
        self.counts["reduce"] += 1
        return Request(self, self.world.Ireduce(send, recv, op=self.MPI.SUM, root=root), "reduce")

    def barrier(self) -> None:
        """Every rank has come this far (within the timeout)."""
        Request(self, self.world.Ibarrier(), "barrier").wait()

    def gather_object(self, obj, root: int = 0) -> list | None:
        """Every rank's ``obj`` on ``root`` (None elsewhere), within the timeout."""
        if self.rank != root:
            Request(self, self.world.isend(obj, dest=root, tag=1), "gather", pickled=True).wait()
            return None
        return [obj if source == root else
                Request(self, self.world.irecv(source=source, tag=1), "gather", pickled=True).wait()
                for source in range(self.size)]

    # -- failures -------------------------------------------------------------------------------------------

    def timed_out(self, what: str) -> None:
        """Tell every peer that this rank timed out in ``what``, hear who else did, and raise naming the rest."""
        peers = [r for r in range(self.size) if r != self.rank]
        for peer in peers:
            self.reports.isend(what, dest=peer, tag=_REPORT_TAG)
        heard, status = set(), self.MPI.Status()
        until = time.monotonic() + _REPORT_GRACE_S
        while time.monotonic() < until and len(heard) < len(peers):
            if self.reports.iprobe(source=self.MPI.ANY_SOURCE, tag=_REPORT_TAG, status=status):
                heard.add(status.Get_source())
                self.reports.recv(source=status.Get_source(), tag=_REPORT_TAG)
            else:
                time.sleep(0.001)
        silent = [r for r in peers if r not in heard] or peers
        names = ", ".join(f"rank {r} (host {self.hosts[r]})" for r in silent)
        me = f"rank {self.rank} (host {self.hosts[self.rank]})"
        raise PeerError(f"{names} did not respond (dead, hung, stopped or unreachable) within the "
                        f"{self.timeout:g} s timeout, in {what}; seen by {me}", silent)

    def first_survivor(self, error: PeerError) -> bool:
        """Whether this rank is the lowest one not named in ``error`` (the one that reports it)."""
        return self.rank == min(r for r in range(self.size) if r not in error.silent)


def _offsets(counts: list[int]) -> list[int]:
    return [0, *np.cumsum(counts[:-1]).tolist()] if counts else []


class MpiTransport:
    """MPI as the executors' transport (:class:`decnn.execution.messages.Transport`)."""

    def __init__(self, comm: MpiComm):
        self.comm, self.rank = comm, comm.rank

    def broadcast(self, array: np.ndarray, root: int) -> Request:
        return self.comm.bcast(array, root)

    def reduce_sum(self, array: np.ndarray, root: int) -> Then:
        out = np.empty_like(array) if self.rank == root else None
        return Then(self.comm.reduce(array, out, root), lambda: out)

    def all_to_all(self, send: np.ndarray, send_counts: list[int], recv: np.ndarray, recv_counts: list[int],
                   what: str = "all_to_all") -> Request:
        size = send.itemsize
        return self.comm.alltoallv(send, [n * size for n in send_counts], recv, [n * size for n in recv_counts], what)

    def exchange(self, sends: list, receives: list) -> AllOf:
        """MoDNN's way: non-blocking point-to-point with the devices that hold or need the halos."""
        return AllOf([self.comm.recv(a, src, tag) for a, src, tag in receives]
                     + [self.comm.send(a, dst, tag) for a, dst, tag in sends])


class NumpyTensors:
    """Activations as numpy arrays (NCHW, float32): the executors' array operations."""

    def array(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values)

    def empty(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        return np.empty(shape, dtype)

    def like(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return np.empty(shape, x.dtype)

    def full(self, shape: tuple[int, ...], fill: float) -> np.ndarray:
        return np.full(shape, fill, np.float32)

    def take(self, x: np.ndarray, index: np.ndarray, out: np.ndarray) -> np.ndarray:
        return np.take(x, index, axis=1, out=out)

    def put(self, out: np.ndarray, index: np.ndarray, src: np.ndarray) -> None:
        out[:, index] = src

    def numpy(self, array: np.ndarray) -> np.ndarray:
        return array
