"""Test-only fault injection: ``DECNN_INJECT_FAULT=RANK:POINT:KIND`` makes a rank fail at a named point."""

from __future__ import annotations

import os
import signal
import sys
import time

__all__ = ["FAULT_ENV", "inject_fault"]

# "RANK:POINT:KIND" makes that rank exit, kill itself, hang, stop or fall behind at that point.
FAULT_ENV = "DECNN_INJECT_FAULT"
SLOW_S = 0.5  # how long a "slow" peer falls behind


def inject_fault(rank: int, point: str) -> None:
    """Test hook (``DECNN_INJECT_FAULT=RANK:POINT:exit|kill|hang|stop|slow``): play a peer that exits with code
    17, is killed by SIGKILL, hangs (sleeps, still answering signals), is stopped by SIGSTOP, or falls
    ``SLOW_S`` seconds behind (sleeps, then goes on) at ``point``."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    fault_rank, fault_point, kind = spec.split(":")
    if (int(fault_rank), fault_point) != (rank, point):
        return
    print(f"[fault] rank {rank}: {kind} at {point}", file=sys.stderr, flush=True)
    if kind == "exit":
        os._exit(17)
    if kind in ("kill", "stop"):
        os.kill(os.getpid(), signal.SIGKILL if kind == "kill" else signal.SIGSTOP)
    time.sleep(SLOW_S if kind == "slow" else 3600)
