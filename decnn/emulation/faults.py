"""Test-only fault injection: ``DECNN_INJECT_FAULT=RANK:POINT:KIND`` makes a rank fail at a named point, or
corrupt the next block it receives in an exchange (``flip``)."""

from __future__ import annotations

import os
import signal
import sys
import time

__all__ = ["FAULT_ENV", "corrupts_next_block", "flip_bytes", "inject_fault"]

# "RANK:POINT:KIND" makes that rank exit, kill itself, hang, stop, fall behind or corrupt what it receives there.
FAULT_ENV = "DECNN_INJECT_FAULT"
SLOW_S = 0.5  # how long a "slow" peer falls behind
_flip_pending = False  # a "flip" fault was injected: the next block this rank receives is corrupted


def inject_fault(rank: int, point: str) -> None:
    """Test hook (``DECNN_INJECT_FAULT=RANK:POINT:exit|kill|hang|stop|slow|flip``): play a peer that exits with
    code 17, is killed by SIGKILL, hangs (sleeps, still answering signals), is stopped by SIGSTOP, or falls
    ``SLOW_S`` seconds behind (sleeps, then goes on) at ``point``, or whose transport corrupts the next block it
    receives in an exchange (``flip``: :func:`corrupts_next_block`)."""
    global _flip_pending
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    fault_rank, fault_point, kind = spec.split(":")
    if (int(fault_rank), fault_point) != (rank, point):
        return
    print(f"[fault] rank {rank}: {kind} at {point}", file=sys.stderr, flush=True)
    if kind == "flip":
        _flip_pending = True
        return
    if kind == "exit":
        os._exit(17)
    if kind in ("kill", "stop"):
        os.kill(os.getpid(), signal.SIGKILL if kind == "kill" else signal.SIGSTOP)
    time.sleep(SLOW_S if kind == "slow" else 3600)


def corrupts_next_block() -> bool:
    """Whether a ``flip`` fault is pending (then the caller flips the bytes of the first block it received, once)."""
    global _flip_pending
    pending, _flip_pending = _flip_pending, False
    return pending


def flip_bytes(block) -> None:
    """Flip the top bit of every byte of ``block`` (a uint8 numpy view, in place), as a transport that delivers
    wrong bytes would; in fp32 rows the values change sign and halve or double, and stay finite."""
    block ^= 0x80
