"""Processes as Linux shows them: the few facts the plumbing reads from /proc (or asks the kernel), and a child
that dies with its parent. No torch."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Iterator
from contextlib import suppress


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie counts); another user's process counts too."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        pass
    return True


def stat(pid: int | str) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) of ``pid`` from /proc/PID/stat, or None if it is gone.

    The command name in parentheses may hold spaces and ')': the fields are read after its last ')'.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, ppid, pgrp = f.read().rsplit(")", 1)[1].split()[:3]
    except (OSError, IndexError, ValueError):
        return None
    return state, int(ppid), int(pgrp)


def processes() -> Iterator[tuple[int, tuple[str, int, int]]]:
    """(pid, :func:`stat`) of every process now running."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = stat(entry.name)
            if fields is not None:
                yield int(entry.name), fields


def group_alive(pgrp: int) -> bool:
    """Whether any process of process group ``pgrp`` still runs (zombies do not count)."""
    return any(group == pgrp and state != "Z" for _pid, (state, _ppid, group) in processes())


def pending_signals(pid: int) -> int:
    """The process's pending signals (process-wide and main thread) as a bit mask, 0 if it is gone."""
    mask = 0
    with suppress(OSError):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("ShdPnd:", "SigPnd:")):
                    mask |= int(line.split()[1], 16)
    return mask


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``).

    Safe as a ``subprocess.Popen(preexec_fn=...)``; the setting survives ``exec``.
    """
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the setting took effect
        os.kill(os.getpid(), signal.SIGKILL)
