"""Network namespaces through iproute2: one ``ip``/``tc`` command, the namespaces there are, and the
check that namespaces, veth pairs and tbf can be set up here (root)."""

from __future__ import annotations

import functools
import itertools
import os
import re
import shutil
import subprocess

from decnn.common.processes import pid_alive

__all__ = ["LinkError", "cleanup_stale", "command", "links_available", "namespace_name", "netns_names"]

_ids = itertools.count()


class LinkError(RuntimeError):
    """An ``ip``/``tc`` command failed; the message names the command and its stderr."""


def namespace_name(prefix: str, suffix: str = "") -> str:
    """A fresh name ``<prefix>-<pid>-<n>[-suffix]``: :func:`cleanup_stale` knows its creator by the pid."""
    return f"{prefix}-{os.getpid()}-{next(_ids)}" + (f"-{suffix}" if suffix else "")


def command(argv: list[str]) -> str:
    """Run one ``ip``/``tc`` command, return its stdout, raise LinkError naming it on failure."""
    try:
        res = subprocess.run(argv, check=True, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise LinkError(f"`{' '.join(argv)}` failed: {e}") from None
    except subprocess.CalledProcessError as e:
        err = (e.stderr or e.stdout or "").strip()
        raise LinkError(f"`{' '.join(argv)}` failed (exit {e.returncode}): {err}") from None
    return res.stdout


def netns_names() -> list[str]:
    """Names from ``ip netns list`` (whose lines look like 'name (id: 3)')."""
    return [line.split()[0] for line in command(["ip", "netns", "list"]).splitlines() if line.strip()]


def cleanup_stale(prefix: str = "decnn") -> list[str]:
    """Delete namespaces named ``<prefix>-<pid>-...`` whose creating process is gone; return their names."""
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)-\d+-")
    removed = []
    for name in netns_names():
        m = pattern.match(name)
        if m and not pid_alive(int(m.group(1))):
            command(["ip", "netns", "del", name])
            removed.append(name)
    return removed


@functools.cache
def links_available() -> tuple[bool, str]:
    """(True, "") if namespaces, veth pairs and tbf can be set up here, else (False, reason)."""
    if os.geteuid() != 0:
        return False, "emulated links need root (network namespaces); not running as root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return False, f"emulated links need iproute2; not found on PATH: {', '.join(missing)}"
    ns = namespace_name("decnn", "probe")
    try:
        command(["ip", "netns", "add", ns])
        try:
            command(["ip", "-n", ns, "link", "add", "name", "p0", "type", "veth", "peer", "name", "p1"])
            command(["tc", "-n", ns, "qdisc", "add", "dev", "p0", "root", "tbf", "rate", "1mbit",
                  "burst", "64kb", "latency", "100ms"])
        finally:
            command(["ip", "netns", "del", ns])
    except LinkError as e:
        return False, f"cannot set up an emulated link here: {e}"
    return True, ""
