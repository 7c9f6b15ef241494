"""One MPI job across the boards, started from the laptop: the MPICH wheel's ``mpiexec`` reaches each board's
hydra proxy through ssh, and each rank runs its board's own Python on its board's own paths.

mpiexec's MPMD form (``-n 1 EXE ARGS : -n 1 EXE ARGS ...``) gives every rank its own command line, so the boards
need not share paths with the laptop or each other. ``-hybrid-hosts`` makes mpiexec start its proxy by name
(``hydra_pmi_proxy``) instead of by the laptop's path, and the ``-launcher-exec`` script this module writes puts
each board's venv first on that board's PATH, then execs ``ssh`` with the deploy's options. Hosts go to mpiexec
as aliases (``decnn-rank<r>``) that the script maps to ``[user@]address``: mpiexec neither parses a user name
nor mistakes a board for itself. The proxies call back to ``-localhost``, the laptop's address as the boards see
it. Between hosts MPI goes over TCP.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from decnn.cluster.hosts import Host, Ssh
from decnn.edge.launch import TCP_ENV


@dataclass(frozen=True)
class Rank:
    """What one rank runs: on ``host``, ``python`` (the board's venv) with ``args``."""

    host: Host
    python: str
    args: list[str]

    @property
    def alias(self) -> str:
        return f"decnn-rank{self.host.rank}"


def launcher_exec(path: Path, ssh: Ssh, ranks: list[Rank]) -> Path:
    """Write mpiexec's ``-launcher-exec`` script to ``path``: called as ``THIS [-x] ALIAS COMMAND...``, it runs
    COMMAND on the board behind ALIAS over ssh, with that board's venv first on its PATH."""
    cases = "\n".join(f"  {r.alias}) target={shlex.quote(r.host.spec)} bin={shlex.quote(str(Path(r.python).parent))};;"
                      for r in ranks)
    options = " ".join(map(shlex.quote, ssh.options()))
    path.write_text(
        "#!/bin/sh\n"
        "# mpiexec -launcher ssh -launcher-exec THIS: called as THIS [-x] ALIAS COMMAND... (written by decnn deploy)\n"
        '[ "$1" = "-x" ] && shift\n'
        "alias=$1; shift\n"
        f"case $alias in\n{cases}\n"
        '  *) echo "error: no board behind $alias" >&2; exit 1;;\n'
        "esac\n"
        f'exec ssh {options} "$target" "PATH=$bin:\\$PATH" "$@"\n'
    )
    path.chmod(0o755)
    return path


def mpiexec_command(ranks: list[Rank], script: Path, laptop: str | None, env: dict[str, str] | None = None
                    ) -> list[str]:
    """The mpiexec command line that runs ``ranks`` (rank r on ``ranks[r].host``) through ``script``; the
    proxies reach the laptop at ``laptop`` (None: mpiexec's own guess, its host name)."""
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    cmd = [mpiexec, "-launcher", "ssh", "-launcher-exec", str(script), "-hybrid-hosts",
           *(["-localhost", laptop] if laptop else []), "-hosts", ",".join(f"{r.alias}:1" for r in ranks),
           "-genvnone"]  # the laptop's environment (its PATH, venv, PYTHONPATH) means nothing on a board
    for key, value in {"DECNN_EDGE_LAUNCHER": "1", **TCP_ENV, **(env or {})}.items():
        cmd += ["-genv", key, value]
    for i, r in enumerate(ranks):
        cmd += [*([":"] if i else []), "-n", "1", r.python, *r.args]
    return cmd
