"""The device runtime across emulated hosts: mpiexec starts each device's process in its host's namespace.

MPICH's launcher reaches other hosts through ssh; ``-launcher-exec`` replaces ssh with a program called as
``PROGRAM [-x] HOST COMMAND...``. The script written here runs COMMAND inside HOST's network namespace, on a
core of its own (host i: core i, as the PyTorch rows over emulated links are pinned), so the activations
cross the shaped veth links over TCP exactly as between boards.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from decnn.bench.links import EmulatedLink


def write_launcher_exec(link: EmulatedLink, path: str | Path) -> Path:
    """An executable script at ``path`` that runs a command in the namespace of the host with its address."""
    cores = sorted(os.sched_getaffinity(0))
    cases = "\n".join(f"  {h.address}) ns={h.netns} core={cores[h.index % len(cores)]};;" for h in link.hosts)
    path = Path(path)
    path.write_text(
        "#!/bin/sh\n"
        "# mpiexec -launcher ssh -launcher-exec THIS: called as THIS [-x] HOST COMMAND...\n"
        '[ "$1" = "-x" ] && shift\n'
        "host=$1; shift\n"
        f"case $host in\n{cases}\n"
        '  *) echo "no emulated host $host" >&2; exit 1;;\n'
        "esac\n"
        'exec ip netns exec "$ns" taskset -c "$core" sh -c "$*"\n'
    )
    path.chmod(0o755)
    return path


def tx_bytes(link: EmulatedLink) -> list[int]:
    """Bytes each host has sent through its link so far (the veth's counter inside its namespace)."""
    return [int(link.run(h.index, ["cat", f"/sys/class/net/{h.ifname}/statistics/tx_bytes"], capture_output=True,
                         text=True, check=True).stdout) for h in link.hosts]


def edge_argv(link: EmulatedLink, script: Path, directory: str | Path, run_args: list[str]) -> list[str]:
    """``decnn edge`` over the link's hosts, one device each, through ``script``."""
    hosts = ",".join(h.address for h in link.hosts)
    return [sys.executable, "-m", "decnn.edge.launch", str(directory), "--hosts", hosts, "--launcher-exec", str(script),
            "--iface", link.hosts[0].ifname, *run_args]
