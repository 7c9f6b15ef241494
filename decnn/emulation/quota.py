"""A CPU quota: a cgroup whose processes get ``fraction`` of one core (cgroup v2 ``cpu.max``, or v1
``cpu.cfs_quota_us`` where only v1 is mounted), a board that many times slower than a core, with the same kernels.

The period is 10 ms so that the throttling is smooth at the scale of one segment (milliseconds), not a stall
of 100 ms now and then. The cgroup also gets the largest CPU weight, so that its processes get their fraction
while other work keeps the cores busy (that work waits meanwhile). Needs root.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import time
from pathlib import Path

from decnn.common.processes import pid_alive
from decnn.emulation.netns import LinkError, namespace_name

PERIOD_US = 10_000
PREFIX = "decnn-quota"
_V2 = Path("/sys/fs/cgroup")
_V1 = Path("/sys/fs/cgroup/cpu")
_V2_WEIGHT, _V1_SHARES = 10_000, 262_144  # the largest CPU weights (cpu.weight, cpu.shares)
_EMPTY_TIMEOUT_S = 5.0  # how long leaving waits for the processes it killed to leave the cgroup


def cgroup_root() -> tuple[Path, bool] | None:
    """(where the cpu controller's cgroups go, whether it is cgroup v2), or None without a cpu controller."""
    if (_V2 / "cgroup.controllers").exists():
        return _V2, True
    if (_V1 / "cpu.cfs_quota_us").exists():
        return _V1, False
    return None


@functools.cache
def quotas_available() -> tuple[bool, str]:
    """(True, "") if CPU quotas can be set up here, else (False, reason)."""
    if os.geteuid() != 0:
        return False, "CPU quotas need root (cgroups); not running as root"
    if cgroup_root() is None:
        return False, "no cgroup cpu controller here (v2 cpu.max or v1 cpu.cfs_quota_us)"
    return True, ""


class CpuQuota:
    """A cgroup whose processes get ``fraction`` of one core. ``join`` (a ``Popen`` ``preexec_fn``) or ``add``
    puts a process in it; its children inherit it. Leaving ends the processes still in it and removes it."""

    def __init__(self, fraction: float, name: str | None = None):
        if not 0 < fraction <= 1:
            raise ValueError(f"CPU fraction must lie in (0, 1], e.g. 0.4; got {fraction}")
        root = cgroup_root()
        if root is None:
            raise LinkError("no writable cgroup cpu controller (v2 cpu.max or v1 cpu.cfs_quota_us) here")
        self.fraction, self.quota_us = fraction, int(fraction * PERIOD_US)
        # <prefix>-<pid>-<n>: remove_stale knows its creator by the pid.
        self.path, self.v2 = root[0] / (name or namespace_name(PREFIX)), root[1]

    def __enter__(self) -> CpuQuota:
        remove_stale()
        try:
            self.path.mkdir()
            if self.v2:
                (self.path / "cpu.max").write_text(f"{self.quota_us} {PERIOD_US}\n")
                (self.path / "cpu.weight").write_text(f"{_V2_WEIGHT}\n")
            else:
                (self.path / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
                (self.path / "cpu.cfs_quota_us").write_text(f"{self.quota_us}\n")
                (self.path / "cpu.shares").write_text(f"{_V1_SHARES}\n")
        except OSError as e:
            self._remove()
            raise LinkError(f"cannot set up the CPU quota at {self.path} (needs root): {e}") from None
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def add(self, pid: int) -> None:
        """Move process ``pid`` into the cgroup (the children it starts later inherit it). Done from outside
        the network namespace: ``ip netns exec`` gives its command a fresh /sys without the cgroup mounts."""
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def join(self) -> None:
        """Move the calling process in: as a ``Popen`` ``preexec_fn``, the child joins before its command runs."""
        self.add(os.getpid())

    def stat(self) -> dict[str, int]:
        """The cgroup's ``cpu.stat``: periods, periods throttled (``nr_throttled``), time throttled."""
        return {k: int(v) for k, v in (line.split() for line in (self.path / "cpu.stat").read_text().splitlines())}

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def _remove(self) -> None:
        """End what still runs in the cgroup (only processes this quota was given: a run that failed or timed
        out may leave some behind), then remove it."""
        if not self.path.exists():
            return
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + _EMPTY_TIMEOUT_S
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.path.rmdir()


def remove_stale() -> None:
    """Remove the empty quota cgroups whose creating process is gone (killed before it could)."""
    root = cgroup_root()
    pattern = re.compile(rf"^{re.escape(PREFIX)}-(\d+)-\d+$")
    for path in root[0].glob(f"{PREFIX}-*") if root else []:
        m = pattern.match(path.name)
        if m and not pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):  # still holds processes: left for whoever owns them
                path.rmdir()
