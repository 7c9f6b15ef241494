"""The boards of one command (``decnn deploy``, ``decnn plan --hosts``), all at once: check each board, install its
environment, copy it the folders it needs; then MPI jobs across them.

A step that fails on a board raises :class:`~decnn.cluster.hosts.HostError` (one line naming it); the other boards
go on, and what they did stays done, so the same command after the fix completes what is left.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, TypeVar

from decnn.cluster.environment import ENV, WHEELS, Platform, Wheels, edge_extra, install_script, requirements
from decnn.cluster.facts import Facts, MiB, check, probe
from decnn.cluster.files import Transfer, sha256, transfer
from decnn.cluster.hosts import Host, HostError, Ssh
from decnn.cluster.mpmd import Rank, launcher_exec, mpiexec_command
from decnn.common.exitcodes import RUNTIME
from decnn.edge.launch import supervise

ENVIRONMENT_BYTES = 400 * MiB  # decnn[edge] installed in a venv (222 MiB on x86_64), with pip's unpacking room
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Board:
    """One board as the command found it, and what it has to receive."""

    host: Host
    facts: Facts
    folders: dict[str, Transfer]  # folder under ~/.decnn -> the files it needs there
    environment: str  # "ready", "decnn" (decnn's wheel changed) or "full" (a fresh venv with decnn[edge])
    wheels: Transfer  # the wheels the install needs there (decnn's; with no index there, its dependencies too)

    @property
    def python(self) -> str:
        return f"{self.facts.root}/{ENV}/bin/python"

    @property
    def changes(self) -> bool:
        return bool(self.wheels.missing or self.environment != "ready"
                    or any(t.missing for t in self.folders.values()))


class Session:
    """``hosts`` reached through ``ssh``; ``wheels`` what their environments are installed from."""

    def __init__(self, hosts: list[Host], ssh: Ssh, wheels: Wheels):
        self.hosts, self.ssh, self.wheels = hosts, ssh, wheels
        self.hashes: dict[Path, str] = {}
        wheel = wheels.decnn()
        needs = json.dumps([*edge_extra(wheel), *requirements(wheel)[1:]])
        self.stamp = {"decnn": sha256(wheel), "dependencies": hashlib.sha256(needs.encode()).hexdigest()}

    def prepare(self, host: Host, folders: dict[str, list[Path]], memory: int) -> Board:
        """What ``host`` is and what it lacks of ``folders`` (under ~/.decnn) and the environment; HostError if it
        cannot run a device that needs ``memory`` bytes free."""
        facts = probe(self.ssh, host, [WHEELS, *folders])
        needed = {name: transfer(files, facts.hashes[name], self.hashes) for name, files in folders.items()}
        held = facts.environment or {}
        environment = ("ready" if held == self.stamp else
                       "decnn" if held.get("dependencies") == self.stamp["dependencies"] else "full")
        wanted = [] if environment == "ready" else [self.wheels.decnn()]
        if environment == "full" and not facts.index and facts.architecture and facts.glibc:
            wanted += self.wheels.dependencies(Platform.of(facts))
        wheels = transfer(wanted, facts.hashes[WHEELS], self.hashes)
        disk = (sum(t.missing_bytes for t in needed.values()) + wheels.missing_bytes
                + (ENVIRONMENT_BYTES if environment == "full" else 0))
        check(host, facts, memory, disk)
        return Board(host, facts, needed, environment, wheels)

    def install(self, board: Board) -> str:
        """Make ``board``'s folders, copy the wheels it lacks and install; what pip warned about, if anything."""
        root = board.facts.root
        self.ssh.run(board.host, "mkdir -p " + " ".join(shlex.quote(f"{root}/{d}") for d in (WHEELS, *board.folders)),
                     "making its folders")
        if board.environment == "ready":
            return ""
        self.ssh.copy(board.host, board.wheels.missing, f"{root}/{WHEELS}", "copying the wheels")
        script = install_script(root, self.wheels.decnn(), requirements(self.wheels.decnn())[1:],
                                offline=not board.facts.index, full=board.environment == "full",
                                new_stamp=self.stamp)
        said = self.ssh.run(board.host, f"sh -c {shlex.quote(script)}", "installing decnn[edge]").stderr
        return " ".join(line.strip() for line in said.splitlines() if line.startswith("WARNING"))

    def copy(self, board: Board) -> None:
        """Copy ``board`` the files it lacks."""
        for name, needed in board.folders.items():
            self.ssh.copy(board.host, needed.missing, f"{board.facts.root}/{name}", "copying its files")

    def set_up(self, board: Board) -> str:
        """:meth:`install`, then :meth:`copy`; what pip warned about."""
        warned = self.install(board)
        self.copy(board)
        return warned

    def mpiexec(self, ranks: list[Rank], workdir: Path, laptop: str | None, stdout: TextIO | None = None) -> int:
        """One MPI job of ``ranks`` (rank r on its board), this machine's mpiexec reaching them over ssh; its
        devices' stdout to ``stdout``; mpiexec's exit code (a failure already reported in one line)."""
        script = launcher_exec(workdir / "launcher-exec", self.ssh, ranks)
        return supervise(mpiexec_command(ranks, script, laptop), stdout=stdout)


def on_every_board(step: Callable[[T], R], items: list[T]) -> tuple[list[R | None], list[HostError]]:
    """``step`` on every item at once; the results in order (None where it failed) and the failures."""
    results: list[R | None] = [None] * len(items)
    errors: list[HostError] = []
    with ThreadPoolExecutor(max_workers=max(len(items), 1)) as pool:
        futures = [pool.submit(step, item) for item in items]
        for i, future in enumerate(futures):
            try:
                results[i] = future.result()
            except HostError as e:
                errors.append(e)
    return results, errors


def failed(errors: list[HostError]) -> int:
    """Report each failed board in one line, in device order; the exit code of a failed board."""
    for e in sorted(errors, key=lambda e: e.host.rank):
        print(f"error: {e}", file=sys.stderr)
    return RUNTIME
