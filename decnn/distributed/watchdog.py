"""A watchdog for stopped processes: a stopped descendant with SIGTERM or SIGINT pending is woken to take it."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from decnn.common import processes

__all__ = ["terminable_when_stopped"]

_ENDING_SIGNALS = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1))


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
                if processes.pending_signals(pid) & _ENDING_SIGNALS:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)

    watcher = threading.Thread(target=watch, name="decnn-wake-stopped", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def _stopped_descendants(root: int) -> list[int]:
    parents, stopped = {}, []
    for pid, (state, ppid, _pgrp) in processes.processes():
        parents[pid] = ppid
        if state == "T":
            stopped.append(pid)
    found = []
    for pid in stopped:
        ancestor = parents.get(pid)
        while ancestor not in (None, 0, 1, root):
            ancestor = parents.get(ancestor)
        if ancestor == root:
            found.append(pid)
    return found
