"""Process plumbing that needs no torch: what a process knows about its launch, and dying with its parent."""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

LOCAL_ENDPOINT = "127.0.0.1:0"  # port 0: the launcher picks a free one


def under_launcher() -> bool:
    """True inside a process started by torchrun or :func:`~decnn.distributed.launcher.launch` (RANK and
    WORLD_SIZE are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_local_launch(nnodes: int, rdzv_endpoint: str) -> bool:
    """True for a run of one node on this machine's loopback rendezvous (no address given)."""
    return nnodes == 1 and rdzv_endpoint == LOCAL_ENDPOINT


@contextmanager
def worker_environment(local: bool) -> Iterator[None]:
    """While open, the environment that the workers of :func:`~decnn.distributed.launcher.launch` inherit
    (restored after): c10d's C++ warnings off (a store poll that timed out would repeat, in torch's words,
    what PeerError says), and for a single-node run gloo on the loopback interface (it would otherwise bind
    to whatever the hostname resolves to). Values the user set are kept."""
    wanted = {"TORCH_CPP_LOG_LEVEL": "ERROR", **({"GLOO_SOCKET_IFNAME": "lo"} if local else {})}
    added = [name for name in wanted if name not in os.environ]
    os.environ.update({name: wanted[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def check_main_reimportable(what: str) -> None:
    """Raise RuntimeError, in one line, if the worker processes could not re-import the main script.

    multiprocessing's forkserver re-runs the caller's main script by its path in every worker; a script read
    from standard input (``python - <<EOF``) has the path ``<stdin>``, which no worker can open.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is None and path is not None and not os.path.exists(path):
        raise RuntimeError(
            f"{what} cannot start its worker processes from a script read from {path}: they re-import the main "
            "script; save it to a file and run `python FILE.py`, or pass it with `python -c`"
        )


def start_worker_server(module: str, local: bool) -> None:
    """Start now the process server that :func:`~decnn.distributed.launcher.launch` forks its workers from, importing
    ``module`` (torch and timm: seconds) while this process does its own imports rather than after them."""
    multiprocessing.set_forkserver_preload([module])
    with worker_environment(local):
        multiprocessing.forkserver.ensure_running()
