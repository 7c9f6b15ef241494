"""Emulated boards: N devices on one machine, each a process held to ``cpu`` of a core by a CPU quota of its own
(:class:`decnn.emulation.quota.CpuQuota`), over this host's loopback or over a tbf-shaped link, each board then in
a network namespace of its own (:class:`decnn.emulation.links.EmulatedLink`). Needs root.

    with Boards(2, cpu=0.5) as boards:                    # decnn edge on two boards of half a core
        split = boards.edge("shards/", ["--images", "32"])
    with Boards(1, cpu=0.5) as boards:                    # the 1-device baseline on a like board
        whole = boards.edge("shards/", ["--images", "32"], single=True)
    with Boards(2, cpu=0.5, link="100mbit") as boards:    # decnn infer (torchrun) over 100 Mbit/s
        record = boards.infer(["--random-init", "--mode", "branch", "--num-images", "32"])

Each board runs one thread, unpinned: a quota'd process pinned beside another fights it for the core. With N x cpu
at most the machine's cores every board gets its share. In a board's quota runs its device's process and what
starts it there, as on a real board: torchrun's agent, or over a link mpiexec's proxy. Over a link mpiexec runs
in a namespace of its own (the laptop): MPICH would start the proxy of a host it runs on without the launcher.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from decnn.common.processes import die_with_parent
from decnn.common.record import RunRecord
from decnn.edge.launch import Report, mpiexec_command
from decnn.emulation.links import EmulatedLink
from decnn.emulation.quota import CpuQuota
from decnn.emulation.rates import parse_rate

LOOPBACK = "loopback"


class BoardsError(RuntimeError):
    """A run on the boards failed or timed out; the message is its first error line."""


class Boards:
    """``devices`` boards of ``cpu`` of a core each, joined by ``link`` (a tbf rate such as "100mbit"; None or
    "loopback": this host's loopback, where MPI shares memory). A context manager: leaving it ends what still
    runs on the boards and removes their cgroups and namespaces."""

    def __init__(self, devices: int, cpu: float, link: str | None = None):
        cores = len(os.sched_getaffinity(0))
        if devices < 1:
            raise ValueError(f"devices must be at least 1; got {devices}")
        if not 0 < cpu <= 1:
            raise ValueError(f"cpu must lie in (0, 1] (a fraction of one core), e.g. 0.5; got {cpu}")
        if devices * cpu > cores + 1e-9:
            raise ValueError(f"{devices} boards of {cpu:g} core need {devices * cpu:g} cores; this machine has "
                             f"{cores}: use cpu <= {cores / devices:g}")
        self.devices, self.cpu = devices, cpu
        self.link = None if link in (None, LOOPBACK) else link
        if self.link:
            parse_rate(self.link)  # a rate tc cannot take fails here, before any cgroup or namespace exists
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Boards:
        with contextlib.ExitStack() as stack:
            self.quotas = [stack.enter_context(CpuQuota(self.cpu)) for _ in range(self.devices)]
            # Host 0 is the laptop that launches; boards are hosts 1..N.
            self.net = (stack.enter_context(EmulatedLink(self.link, self.devices + 1, name_prefix="decnnboards"))
                        if self.link else None)
            self.tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="decnn-boards-")))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @property
    def link_name(self) -> str:
        return self.link or LOOPBACK

    # -- decnn edge -----------------------------------------------------------------------------------------

    def edge(self, directory: str | Path, run_args: list[str] = (), single: bool = False,
             timeout: float = 120.0) -> RunRecord:
        """One ``decnn edge`` run of the export in ``directory`` (``single``: its whole model on one board),
        ``run_args`` going to every device (``python -m decnn.edge.device_run --help``); the run's record."""
        if single and self.devices != 1:
            raise ValueError(f"single runs the whole model on 1 board; these are {self.devices} boards")
        out = self.tmp / "edge.json"
        out.unlink(missing_ok=True)
        args = ["--threads", "1", "--no-pin-cores", "--timeout", str(timeout), *map(str, run_args), "--out", str(out)]
        if self.net is None:
            cmd = mpiexec_command(directory, args, devices=self.devices, single=single)
            # Every rank first joins its board's quota (mpiexec starts all ranks of one host from one proxy).
            at = cmd.index(sys.executable)
            cmd[at:at] = [str(self._rank_wrapper())]
        else:
            boards = self.net.hosts[1:]
            cmd = mpiexec_command(directory, args, hosts=[h.address for h in boards], single=single,
                                  iface=self.net.hosts[0].ifname, launcher_exec=str(self._launcher_exec()))
            # mpiexec joins the laptop's network only: `ip netns exec` would hide the cgroups that the proxies it
            # starts through the launcher must join.
            cmd = ["nsenter", f"--net=/run/netns/{self.net.hosts[0].netns}", *cmd]
        proc, log = self._start("edge", cmd, None, die_with_parent)
        output = _finish([(proc, log)], timeout * 2 + 60)[0]
        if proc.returncode:
            report = Report()
            report.feed(output)
            raise BoardsError(_first_error(output) or report.failure(proc.returncode))
        return self._record(out)

    def _rank_wrapper(self) -> Path:
        """A script mpiexec runs in front of each rank's command: the rank joins its board's quota, by rank."""
        cases = "\n".join(f"  {i}) quota={q.path};;" for i, q in enumerate(self.quotas))
        return _script(self.tmp / "join-board", (
            "# mpiexec runs THIS COMMAND... for every rank: the rank joins its board's CPU quota, then runs.\n"
            f"case $PMI_RANK in\n{cases}\n"
            '  *) echo "error: no emulated board for rank $PMI_RANK" >&2; exit 1;;\n'
            "esac\n"
            'echo $$ > "$quota/cgroup.procs" && exec "$@"\n'))

    def _launcher_exec(self) -> Path:
        """mpiexec's ``-launcher-exec``: called as ``THIS [-x] HOST COMMAND...``, runs the proxy of board HOST
        in its quota (joined first: inside a namespace /sys has no cgroups), then in its namespace."""
        cases = "\n".join(f"  {h.address}) ns={h.netns} quota={q.path};;"
                          for h, q in zip(self.net.hosts[1:], self.quotas))
        return _script(self.tmp / "board-exec", (
            '[ "$1" = "-x" ] && shift\n'
            "host=$1; shift\n"
            f"case $host in\n{cases}\n"
            '  *) echo "error: no emulated board at $host" >&2; exit 1;;\n'
            "esac\n"
            'echo $$ > "$quota/cgroup.procs" && exec ip netns exec "$ns" sh -c "$*"\n'))

    # -- decnn infer (PyTorch) ------------------------------------------------------------------------------

    def infer(self, args: list[str], timeout: float = 300.0) -> RunRecord:
        """One ``decnn infer`` run (``python -m decnn.jobs.infer ARGS``) with one torchrun node per board; the
        run's record. Board i is rank i (a static rendezvous on board 0)."""
        out = self.tmp / "infer.json"
        out.unlink(missing_ok=True)
        hosts = self.net.hosts[1:] if self.net else None
        master = hosts[0].address if hosts else "127.0.0.1"
        port = 29500 if hosts else _free_port()  # a board's namespace has its ports to itself
        started = []
        for i, quota in enumerate(self.quotas):
            argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(self.devices),
                    "--nproc-per-node", "1", "--node-rank", str(i), "--rdzv-backend", "static", "--master-addr",
                    master, "--master-port", str(port), *(["--local-addr", hosts[i].address] if hosts else []),
                    "-m", "decnn.jobs.infer", "--threads", "1", "--no-pin-cores", "--log-dir", "",
                    "--timeout", str(timeout), *map(str, args), "--out", str(out)]
            started.append(self._start(f"board{i}", argv, hosts[i].index if hosts else None, _joining(quota)))
        outputs = _finish(started, timeout * 2 + 60)
        for i, ((proc, _), output) in enumerate(zip(started, outputs)):
            if proc.returncode:
                said = _first_error(output) or " | ".join(output.strip().splitlines()[-3:])
                raise BoardsError(f"board {i} exited with code {proc.returncode}: {said}")
        return self._record(out)

    def _start(self, name: str, argv: list[str], host: int | None, preexec) -> tuple[subprocess.Popen, Path]:
        """Start ``argv`` in a session of its own (in host ``host``'s namespace, if any), its output in a log
        file: several processes' pipes read one after the other could fill up and stall them."""
        log = self.tmp / f"{name}.log"
        with log.open("w") as f:
            kw = {"stdout": f, "stderr": subprocess.STDOUT, "start_new_session": True, "preexec_fn": preexec}
            proc = subprocess.Popen(argv, **kw) if host is None else self.net.popen(host, argv, **kw)
        return proc, log

    def _record(self, out: Path) -> RunRecord:
        if not out.exists():
            raise BoardsError(f"the run ended without writing its record ({out})")
        record = RunRecord.from_dict(json.loads(out.read_text()))
        return dataclasses.replace(record, cpu_fraction=self.cpu, link=self.link_name)


def _first_error(output: str) -> str | None:
    """The first error line of a run's output: a device's own, or its argument parser's."""
    return next((line.strip() for line in output.splitlines() if "error:" in line), None)


def _joining(quota: CpuQuota):
    """A ``preexec_fn``: the child dies with this process and joins ``quota`` before its command runs."""
    def preexec() -> None:
        die_with_parent()
        quota.join()
    return preexec


def _finish(started: list[tuple[subprocess.Popen, Path]], timeout: float) -> list[str]:
    """Every process's output once all have ended; past ``timeout`` seconds their sessions are killed."""
    deadline = time.monotonic() + timeout
    try:
        for proc, _ in started:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        for proc, _ in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise BoardsError(f"the run on the boards did not end within {timeout:g} s") from None
    return [log.read_text() for _, log in started]


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
