"""N processes on this node through torch's elastic launcher (the machinery behind ``torchrun``).

If a worker fails the launcher stops the others and :func:`launch` raises :class:`LaunchError` naming the
rank; :func:`exit_with_launcher` makes a worker die with its parent and at once on Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from decnn.common.processes import die_with_parent
from decnn.distributed.process import LOCAL_ENDPOINT, is_local_launch, start_worker_server, worker_environment
from decnn.distributed.watchdog import terminable_when_stopped
from decnn.emulation.faults import FAULT_ENV

__all__ = ["LaunchError", "exit_with_launcher", "launch"]

_SHUTDOWN_TIMEOUT_S = 3  # SIGTERM -> SIGKILL grace for the launcher's workers


class LaunchError(RuntimeError):
    """A worker process of :func:`launch` failed; the message names the rank and the cause."""


def exit_with_launcher() -> None:
    """Call first in a worker process: it is killed when its parent (the launcher) dies, even by SIGKILL,
    and Ctrl-C ends it at once and quietly (the launcher reports the interrupt once, for all)."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
            return elastic_launch(config, _with_faults)(os.environ.get(FAULT_ENV), fn, *args)
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


def _with_faults(fault: str | None, fn: Callable[..., Any], *args: Any) -> Any:
    """A worker: ``fn(*args)`` under the launching process's fault injection (test hook; the server that the
    workers fork from may have started before it was set)."""
    if fault:
        os.environ[FAULT_ENV] = fault
    return fn(*args)


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
