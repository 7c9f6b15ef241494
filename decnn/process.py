"""Process plumbing that needs no torch: what a process knows about its launch, and dying with its parent."""

from __future__ import annotations

import ctypes
import os
import signal

LOCAL_ENDPOINT = "127.0.0.1:0"  # port 0: the launcher picks a free one
_PR_SET_PDEATHSIG = 1


def under_launcher() -> bool:
    """True inside a process started by torchrun or :func:`decnn.comm.launch` (RANK and WORLD_SIZE are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``).

    Safe as a ``subprocess.Popen(preexec_fn=...)``; the setting survives ``exec``.
    """
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the setting took effect
        os.kill(os.getpid(), signal.SIGKILL)
