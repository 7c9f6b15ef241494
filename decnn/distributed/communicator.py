"""This process's membership in a run: collectives with a timeout that name the peer that failed.

Under a launcher (torchrun or :func:`decnn.distributed.launcher.launch`) a :class:`Communicator` joins the
group from the environment; otherwise it forms a group of one. Set-up and every collective run under the
run's timeout and are counted; a failure (a peer that died, hangs, is stopped or cannot be reached) is a
:class:`PeerError` naming the ranks (and hosts) that did not take part.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from decnn.distributed.process import under_launcher

__all__ = ["Communicator", "PeerError", "Pending", "backend_for"]

_FAULT_KEY = "decnn/failed/"
_HOST_KEY = "decnn/host/"
_NAMING_WAIT_S = 1.0  # longest a failing rank waits to learn which peers failed too


class PeerError(RuntimeError):
    """A collective failed or timed out; the message names the ranks that did not take part.

    The parts, for reports: ``seen_by`` (this rank), ``where`` (the collective), ``missing`` ([rank, host]
    pairs, empty where nobody could be named) and ``detail`` (the backend's first line).
    """

    def __init__(self, message: str, seen_by: int = 0, where: str = "", missing=(), detail: str = ""):
        super().__init__(message)
        self.seen_by, self.where, self.missing, self.detail = seen_by, where, [list(m) for m in missing], detail


def backend_for(device: torch.device) -> str:
    """gloo for CPU tensors, NCCL for CUDA tensors."""
    return "nccl" if device.type == "cuda" else "gloo"


class Pending:
    """An asynchronous collective; :meth:`wait` blocks until it completes (time counted as communication)."""

    def __init__(self, comm: Communicator, work: dist.Work, what: str):
        self._comm, self._work, self._what = comm, work, what

    def wait(self) -> None:
        start = time.perf_counter()
        try:
            # The explicit timeout bounds point-to-point waits too (gloo applies it to collectives itself).
            self._work.wait(timedelta(seconds=self._comm.timeout_s))
        except Exception as e:  # gloo raises RuntimeError/DistBackendError on timeouts and dead peers
            self._comm.fail(self._what, e)
        self._comm.wait_s += time.perf_counter() - start


class Communicator:
    """This process's membership in the run: rank, world size, counted collectives with a timeout.

    Under a launcher (torchrun or :func:`launch`) it joins the group from the environment; otherwise it
    forms a group of one. ``counts`` tallies collectives by name, ``wait_s`` the time spent blocked in them.
    """

    def __init__(self, timeout_s: float, device: torch.device | None = None):
        self.timeout_s = timeout_s
        self.counts: Counter[str] = Counter()
        self.wait_s = 0.0
        self.store, self.rank, self.world_size = None, int(os.environ.get("RANK", 0)), 1
        timeout = timedelta(seconds=timeout_s)
        if under_launcher():
            self.world_size = int(os.environ["WORLD_SIZE"])
            try:
                store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
            except Exception as e:  # the launcher's store is gone or unreachable: nobody to ask who failed
                self._raise("set-up (joining the rendezvous store)", e, [])
            self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
            self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        else:
            store, rank, world_size = dist.HashStore(), 0, 1
            self.local_rank, self.local_world_size = 0, 1
        self.store, self.rank, self.world_size = store, rank, world_size
        device = device or torch.device("cpu")
        self.device = torch.device("cuda", self.local_rank) if device.type == "cuda" else device
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        try:
            store.set(f"{_HOST_KEY}{rank}", host_label())
            # The timeout bounds every gloo collective too, not only the set-up.
            dist.init_process_group(backend_for(self.device), store=store, rank=rank, world_size=world_size,
                                    timeout=timeout)
        except Exception as e:  # a peer that never joined (dead, hung, stopped, unreachable)
            self.fail("set-up (connecting the processes)", e)

    # -- collectives: each returns a Pending when async_op, else completes before returning --

    def broadcast(self, tensor: torch.Tensor, src: int = 0, async_op: bool = False) -> Pending | None:
        return self._run("broadcast", dist.broadcast(tensor, src, async_op=True), async_op)

    def all_to_all(
        self,
        output: torch.Tensor,
        input: torch.Tensor,
        output_splits: list[int],
        input_splits: list[int],
        async_op: bool = False,
    ) -> Pending | None:
        """``all_to_all_single`` along dim 0 with per-rank split sizes."""
        work = dist.all_to_all_single(output, input, output_splits, input_splits, async_op=True)
        return self._run("all_to_all", work, async_op)

    def reduce(self, tensor: torch.Tensor, dst: int = 0, async_op: bool = False) -> Pending | None:
        """Sum ``tensor`` over ranks into ``dst``'s copy."""
        return self._run("reduce", dist.reduce(tensor, dst, op=dist.ReduceOp.SUM, async_op=True), async_op)

    def send(self, tensor: torch.Tensor, dst: int, async_op: bool = False, tag: int = 0) -> Pending | None:
        """Point-to-point to ``dst`` (a contiguous tensor: the pipeline's activations, a spatial split's halo);
        messages between two ranks under one ``tag`` arrive in order."""
        return self._run("send", dist.isend(tensor, dst, tag=tag), async_op)

    def recv(self, tensor: torch.Tensor, src: int, async_op: bool = False, tag: int = 0) -> Pending | None:
        """Point-to-point from ``src`` into ``tensor`` (same shape and dtype as the one sent under ``tag``)."""
        return self._run("recv", dist.irecv(tensor, src, tag=tag), async_op)

    def scatter(self, output: torch.Tensor, inputs: list[torch.Tensor] | None, src: int = 0,
                async_op: bool = False) -> Pending | None:
        work = dist.scatter(output, inputs if self.rank == src else None, src, async_op=True)
        return self._run("scatter", work, async_op)

    def gather(self, tensor: torch.Tensor, outputs: list[torch.Tensor] | None, dst: int = 0,
               async_op: bool = False) -> Pending | None:
        work = dist.gather(tensor, outputs if self.rank == dst else None, dst, async_op=True)
        return self._run("gather", work, async_op)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Send a picklable object from ``src`` to all (set-up and results only, never per image)."""
        box = [obj]
        self._guard("broadcast_object", lambda: dist.broadcast_object_list(box, src))
        return box[0]

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Collect a picklable object from every rank on ``dst`` (set-up and results only)."""
        out = [None] * self.world_size if self.rank == dst else None
        self._guard("gather_object", lambda: dist.gather_object(obj, out, dst))
        return out

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    # -- failures --

    def _run(self, what: str, work: dist.Work, async_op: bool = False) -> Pending | None:
        self.counts[what] += 1
        pending = Pending(self, work, what)
        if async_op:
            return pending
        pending.wait()
        return None

    def _guard(self, what: str, fn: Callable[[], None]) -> None:
        self.counts[what] += 1
        try:
            fn()
        except Exception as e:
            self.fail(what, e)

    def fail(self, what: str, error: BaseException) -> None:
        """Raise a PeerError naming the ranks that did not report the same failure in time.

        Every rank whose collective fails marks itself in the rendezvous store and waits briefly for the
        others: a rank that neither completes nor fails the collective is the one that died, hangs or
        cannot be reached.
        """
        missing: list[int] = []
        if self.store is not None:
            try:
                # A store behind a dead link must not hold this rank for another timeout.
                self.store.set_timeout(timedelta(seconds=_NAMING_WAIT_S))
                self.store.set(f"{_FAULT_KEY}{self.rank}", what)
                deadline = time.monotonic() + min(_NAMING_WAIT_S, self.timeout_s / 4)
                missing = [r for r in range(self.world_size) if r != self.rank]
                while missing and time.monotonic() < deadline:
                    missing = [r for r in missing if not self.store.check([f"{_FAULT_KEY}{r}"])]
                    time.sleep(0.05)
                missing = [(r, self._host_of(r)) for r in missing]
            except Exception:  # the store went down with its host, or cannot be reached: name nobody
                missing = []
        self._raise(what, error, missing)

    def _host_of(self, rank: int) -> str | None:
        key = f"{_HOST_KEY}{rank}"
        return self.store.get(key).decode() if self.store.check([key]) else None

    def _raise(self, what: str, error: BaseException, missing: list[tuple[int, str | None]]) -> None:
        if missing:
            names = ", ".join(f"{r}" + (f" (host {host})" if host else "") for r, host in missing)
            who = f"rank{'s' if len(missing) > 1 else ''} {names} did not respond (dead, hung, stopped or unreachable)"
        else:
            who = "a peer or the rendezvous store failed"
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        raise PeerError(f"{who} within the {self.timeout_s:g} s timeout, in {what}; "
                        f"seen by rank {self.rank} ({type(error).__name__}: {detail})",
                        self.rank, what, missing, detail) from error


def host_label() -> str:
    """This device's name (``DECNN_DEVICE_NAME``, else the hostname), with the address it reaches the
    rendezvous by when that is not loopback."""
    name = os.environ.get("DECNN_DEVICE_NAME") or socket.gethostname()
    master = os.environ.get("MASTER_ADDR")
    if not master:
        return name
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((master, 1))  # no packet is sent: this only picks the route
            address = s.getsockname()[0]
    except OSError:
        return name
    return name if address.startswith("127.") else f"{name} {address}"
