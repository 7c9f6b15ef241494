"""Process groups and collectives for split inference (torch.distributed only; knows nothing about models).

One process per device. :func:`launch` starts N local processes through torch's elastic launcher (the
machinery behind ``torchrun``); under ``torchrun`` the processes already exist and :class:`Communicator`
joins them from the environment. Set-up and every collective run under the run's timeout, are counted, and
a failure (a peer that died, hangs, is stopped or cannot be reached) is reported as a :class:`PeerError`
naming the ranks (and hosts) that did not take part.

Shutdown pieces for any process that runs workers: :func:`exit_with_launcher` (a worker dies with its
parent and at once on Ctrl-C) and :func:`launch`'s prompt stop of the remaining workers when one fails.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from decnn.process import (
    LOCAL_ENDPOINT,
    die_with_parent,
    is_local_launch,
    start_worker_server,
    under_launcher,
    worker_environment,
)

__all__ = [
    "LOCAL_ENDPOINT",
    "Communicator",
    "LaunchError",
    "PeerError",
    "Pending",
    "backend_for",
    "configure_threads",
    "exit_with_launcher",
    "launch",
    "terminable_when_stopped",
    "under_launcher",
]

_FAULT_KEY = "decnn/failed/"
_HOST_KEY = "decnn/host/"
_SHUTDOWN_TIMEOUT_S = 3  # SIGTERM -> SIGKILL grace for the launcher's workers
_NAMING_WAIT_S = 1.0  # longest a failing rank waits to learn which peers failed too


class PeerError(RuntimeError):
    """A collective failed or timed out; the message names the ranks that did not take part."""


class LaunchError(RuntimeError):
    """A worker process of :func:`launch` failed; the message names the rank and the cause."""


def exit_with_launcher() -> None:
    """Call first in a worker process: it is killed when its parent (the launcher) dies, even by SIGKILL,
    and Ctrl-C ends it at once and quietly (the launcher reports the interrupt once, for all)."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def backend_for(device: torch.device) -> str:
    """gloo for CPU tensors, NCCL for CUDA tensors."""
    return "nccl" if device.type == "cuda" else "gloo"


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


def launch(
    fn: Callable[..., Any],
    args: Sequence[Any],
    nproc: int,
    *,
    nnodes: int = 1,
    rdzv_endpoint: str = LOCAL_ENDPOINT,
) -> dict[int, Any]:
    """Run ``fn(*args)`` in ``nproc`` processes on this node (of ``nnodes``) with torch's elastic launcher.

    Returns each rank's return value. If a worker fails the launcher stops the others (stopped ones too:
    :func:`terminable_when_stopped`) and this raises :class:`LaunchError` naming the rank; Ctrl-C (SIGINT
    to this process) stops every worker and raises KeyboardInterrupt. A single-node run binds everything
    to the loopback interface.
    """
    local = is_local_launch(nnodes, rdzv_endpoint)
    host = rdzv_endpoint.rsplit(":", 1)[0]
    # The node that owns the endpoint's address hosts the rendezvous store and the workers' master address.
    # torch guesses both from the hostname, which fails where it resolves to 127.0.0.1 (containers,
    # network namespaces): say it.
    owner = _is_local_address(host)
    config = LaunchConfig(
        min_nodes=nnodes,
        max_nodes=nnodes,
        nproc_per_node=nproc,
        run_id=uuid.uuid4().hex if local else "decnn",
        rdzv_backend="c10d",
        rdzv_endpoint=rdzv_endpoint,
        rdzv_configs={"is_host": True} if owner else {},
        max_restarts=0,
        monitor_interval=0.1,
        start_method="forkserver",
        local_addr=host if owner else None,
        shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
    )
    # Workers fork from one server process that has imported torch and fn's module once, instead of
    # each importing them anew (seconds per process); a command line may have started it already.
    start_worker_server(fn.__module__, local)
    # The launcher logs every failure with its traceback; LaunchError says it in one line instead.
    quiet = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
             if name.startswith(("torch.distributed.elastic", "torch.multiprocessing"))]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.CRITICAL)
    try:
        with terminable_when_stopped(), worker_environment(local):
            return elastic_launch(config, fn)(*args)
    except ChildFailedError as e:
        raise LaunchError(_describe_failures(e)) from None
    except SignalException as e:  # the agent stopped the workers first
        if e.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise SystemExit(128 + e.sigval) from None
    except EOFError:  # the fork server that starts the workers died (killed by hand, out of memory)
        raise LaunchError("the process server that starts the workers died before they all started") from None
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)


@contextmanager
def terminable_when_stopped(interval_s: float = 0.1) -> Iterator[None]:
    """While open, a descendant process that is stopped (SIGSTOP, Ctrl-Z) with a SIGTERM or SIGINT pending
    gets SIGCONT, so that the signal ends it at once.

    When one worker fails, torch's process context sends the others SIGTERM and waits 30 s before SIGKILL;
    a stopped worker cannot act on SIGTERM, and a stopped peer made the run overrun its timeout by 30 s.
    """
    done = threading.Event()

    def watch() -> None:
        while not done.wait(interval_s):
            for pid in _stopped_descendants(os.getpid()):
                if _pending_signals(pid) & _ENDING_SIGNALS:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)

    watcher = threading.Thread(target=watch, name="decnn-wake-stopped", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


_ENDING_SIGNALS = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1))


def _stopped_descendants(root: int) -> list[int]:
    parents, stopped = {}, []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        parents[int(entry.name)] = int(ppid)
        if state == "T":
            stopped.append(int(entry.name))
    found = []
    for pid in stopped:
        ancestor = parents.get(pid)
        while ancestor not in (None, 0, 1, root):
            ancestor = parents.get(ancestor)
        if ancestor == root:
            found.append(pid)
    return found


def _pending_signals(pid: int) -> int:
    """The process's pending signals (process-wide and main thread) as a bit mask, 0 if it is gone."""
    mask = 0
    with suppress(OSError):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("ShdPnd:", "SigPnd:")):
                    mask |= int(line.split()[1], 16)
    return mask


def _is_local_address(host: str) -> bool:
    """True if ``host`` names an address of this machine (one a socket can bind to)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


def _describe_failures(e: ChildFailedError) -> str:
    lines = []
    for rank, failure in sorted(e.failures.items(), key=lambda kv: kv[1].timestamp):
        msg = failure.message
        if isinstance(msg, dict):  # a Python exception recorded by the worker
            lines.append(f"rank {rank} failed: {msg.get('message', msg)}")
        elif failure.exitcode < 0:
            lines.append(f"rank {rank} was killed by {failure.signal_name()} (pid {failure.pid})")
        else:
            lines.append(f"rank {rank} exited with code {failure.exitcode} (pid {failure.pid})")
    return "; ".join(lines)


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
            store.set(f"{_HOST_KEY}{rank}", _host_label())
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

    def send(self, tensor: torch.Tensor, dst: int, async_op: bool = False) -> Pending | None:
        """Point-to-point to ``dst`` (a contiguous tensor; the pipeline baseline's activations)."""
        return self._run("send", dist.isend(tensor, dst), async_op)

    def recv(self, tensor: torch.Tensor, src: int, async_op: bool = False) -> Pending | None:
        """Point-to-point from ``src`` into ``tensor`` (same shape and dtype as the one sent)."""
        return self._run("recv", dist.irecv(tensor, src), async_op)

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
                        f"seen by rank {self.rank} ({type(error).__name__}: {detail})") from error


def _host_label() -> str:
    """This host's name, with the address it reaches the rendezvous by when that is not loopback."""
    name = socket.gethostname()
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
