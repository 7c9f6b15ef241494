"""``decnn edge``: a split on devices without torch, launched by ``mpiexec``; failures in one line.

    decnn edge shards/ --devices 2 --verify                      # one host: MPI over shared memory
    decnn edge shards/ --devices 2 --transport tcp               # one host, forced over TCP
    decnn edge shards/ --hosts board0,board1 --batch 1           # two hosts (ssh, same paths on each)
    decnn edge shards/ --single                                  # the whole model on one device
    decnn edge modnn/ --devices 3 --verify                       # a spatial export on any device count

The options under "each device's run" go to every device's run as they are (``python -m
decnn.edge.device_run``). The command checks the folder first, starts ``mpiexec``, passes the
devices' output through, and turns ``mpiexec``'s report of a dead process into one line naming its rank and
host. Exit codes: 0, 2 (bad input), 1 (a device failed), 130 (Ctrl-C).
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TextIO

from decnn.common.exitcodes import INTERRUPTED, RUNTIME, USAGE
from decnn.common.job_parser import job_parser
from decnn.edge.device_run import IDENTITY, add_run_arguments, speeds_arg
from decnn.edge.spatial import tiling_of
from decnn.wire.export_format import BundleError, read_manifest, split_mode
from decnn.wire.spatial import SPATIAL_MODES

# On one host MPICH moves data through shared memory; these make UCX, its network layer, use TCP instead.
TCP_ENV = {"MPIR_CVAR_NOLOCAL": "1", "UCX_TLS": "tcp,self"}
_IDENTITY = re.compile(re.escape(IDENTITY) + r" rank (\d+) pid (\d+) host ([^\s;]+);\n?")
_USAGE = re.compile(re.escape(IDENTITY) + r" usage;\n?")  # a device refused its input (exit 2)
_HYDRA_DEATH = re.compile(r"PID (\d+) RUNNING AT (\S+)")
_HYDRA_EXIT = re.compile(r"EXIT (?:CODE|STRING): (.+)")


def parser() -> argparse.ArgumentParser:
    """Every option of ``decnn edge``: its own and each device's run's."""
    p = _launcher_parser()
    add_run_arguments(p.add_argument_group("each device's run"), leave_out=("--mode", "--speeds"))  # they are ours
    return p


def _launcher_parser() -> argparse.ArgumentParser:
    p = job_parser("edge", __doc__)
    p.add_argument("directory", help="a folder written by `decnn export CHECKPOINT --onnx`")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--devices", type=int, help="processes on this host (default: the export's device count)")
    where.add_argument("--hosts", help="comma-separated hosts, one device each, in rank order (mpiexec -hosts)")
    where.add_argument("--single", action="store_true", help="the whole model's graph on one process")
    p.add_argument("--mode", choices=SPATIAL_MODES, help="a spatial export (decnn export --mode modnn|grid): run "
                   "it as row bands or tiles, on --devices N (default: the export's mode and devices)")
    p.add_argument("--speeds", type=speeds_arg, help="modnn: the devices' relative speeds, e.g. 1,0.4")
    p.add_argument("--transport", choices=("auto", "tcp"), default="auto",
                   help="auto: shared memory between processes of one host, TCP between hosts; tcp: TCP always")
    p.add_argument("--iface", help="the network interface MPI uses (e.g. eth0)")
    p.add_argument("--mpiexec", default=None, help="the mpiexec to run (default: the one beside this Python)")
    p.add_argument("--launcher-exec", help=argparse.SUPPRESS)  # mpiexec -launcher-exec: runs a proxy on a host
    return p


def mpiexec_command(directory: str | Path, run_args: list[str], *, module: str = "decnn.edge.device_run",
                    devices: int | None = None, hosts: list[str] | None = None, single: bool = False,
                    transport: str = "auto", iface: str | None = None, mpiexec: str | None = None,
                    launcher_exec: str | None = None, spatial: str | None = None,
                    speeds: list[float] | None = None) -> list[str]:
    """The mpiexec command line that runs ``module`` on every device of the export in ``directory``; a spatial
    export runs on any device count its maps allow, as ``spatial`` (modnn or grid; default: the export's)."""
    manifest = read_manifest(directory)
    hosts = hosts or []
    exported = len(manifest["devices"])
    devices = 1 if single else len(hosts) or devices or exported
    if split_mode(manifest) != "branch":
        if not single:
            tiling_of(manifest, devices, spatial, speeds)
        run_args = [*run_args, *(["--mode", spatial] if spatial else []),
                    *(["--speeds", ",".join(map(str, speeds))] if speeds else [])]
    elif spatial or speeds:
        raise BundleError(f"{directory} holds DeCNN's branches: --mode and --speeds apply to a spatial export "
                          "(decnn export CHECKPOINT --mode modnn|grid --onnx ...)")
    elif not single and devices != exported:
        raise BundleError(f"{directory} is exported for {exported} devices, not {devices}: pass --devices "
                          f"{exported}, or export again with `decnn export CHECKPOINT --devices {devices} --onnx ...`")
    tcp = transport == "tcp" or len(set(hosts)) > 1
    mpiexec = mpiexec or shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    cmd = [mpiexec, "-n", str(devices)]
    if hosts:
        cmd += ["-hosts", ",".join(hosts)]
    if launcher_exec:
        cmd += ["-launcher", "ssh", "-launcher-exec", str(launcher_exec)]
    env = {"DECNN_EDGE_LAUNCHER": "1", **(TCP_ENV if tcp else {})}
    if iface:
        cmd += ["-iface", iface]
        env["UCX_NET_DEVICES"] = iface
    for key, value in env.items():
        cmd += ["-genv", key, value]
    return [*cmd, sys.executable, "-m", module, str(directory), "--transport", "mpi-tcp" if tcp else "mpi-shm",
            *(["--single"] if single else []), *run_args]


class Report:
    """Reads the devices' and mpiexec's lines: passes the devices' through, keeps mpiexec's own report of a
    dead process and the ranks' identity lines, and turns them into one line naming the rank."""

    def __init__(self):
        self.ranks: dict[str, tuple[str, str]] = {}  # pid -> (rank, host)
        self.hydra: list[str] = []
        self.errors: list[str] = []
        self.interrupted = self.usage = False

    def feed(self, line: str) -> str | None:
        """The line (or lines) to show; None: keep it off the console."""
        if line.count("\n") > 1:
            shown = [self.feed(part) for part in line.splitlines(keepends=True)]
            return "".join(s for s in shown if s) or None
        for rank, pid, host in _IDENTITY.findall(line):
            self.ranks[pid] = (rank, host)
        line = _IDENTITY.sub("", line)
        if _USAGE.search(line):
            self.usage, line = True, _USAGE.sub("", line)
        if _hydra(line):
            self.hydra.append(line)
        elif line.strip() == "interrupted":
            self.interrupted = True
        elif line.strip():
            if line.startswith("error:"):
                self.errors.append(line.strip())
            return line
        return None

    def failure(self, code: int) -> str:
        """The error of a failed run: a device's own line, or mpiexec's report in the project's words."""
        if self.errors:
            return self.errors[0]
        text = "".join(self.hydra)
        death, exit_ = _HYDRA_DEATH.search(text), _HYDRA_EXIT.search(text)
        if death is None:
            return f"error: a device process failed (mpiexec exited with code {code})"
        rank, host = self.ranks.get(death.group(1), ("?", death.group(2)))
        cause = exit_.group(1).strip() if exit_ else f"code {code}"
        if cause.isdigit():
            number = int(cause)
            cause = (f"killed by {signal.Signals(number).name}" if 0 < number < 32 and number != 1
                     else f"exit code {number}")
        return f"error: rank {rank} (host {host}) died ({cause}); mpiexec ended the other devices"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # every option checked, the devices' too, before anything starts
    run_args = _launcher_parser().parse_known_args(argv)[1]
    try:
        cmd = mpiexec_command(args.directory, run_args, devices=args.devices, single=args.single,
                              hosts=args.hosts.split(",") if args.hosts else None, transport=args.transport,
                              iface=args.iface, mpiexec=args.mpiexec, launcher_exec=args.launcher_exec,
                              spatial=args.mode, speeds=args.speeds)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE
    return supervise(cmd)


def supervise(cmd: list[str], stdout: TextIO | None = None) -> int:
    """Run mpiexec; pass the devices' lines through (their stdout to ``stdout``, default this process's);
    mpiexec's own report of a failure becomes one line."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    report = Report()

    def read(stream, out) -> None:
        for line in stream:
            shown = report.feed(line)
            if shown is not None:
                out.write(shown)
                out.flush()

    reader = threading.Thread(target=read, args=(proc.stdout, stdout or sys.stdout), daemon=True)
    reader.start()
    try:
        read(proc.stderr, sys.stderr)
        code = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        report.interrupted, code = True, INTERRUPTED
    reader.join(timeout=5)
    if report.interrupted:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    if code in (0, USAGE):
        return code
    if report.usage:
        return USAGE
    if not report.errors:
        print(report.failure(code), file=sys.stderr)
    return RUNTIME


def _hydra(line: str) -> bool:
    """A line of mpiexec's own failure report."""
    return (line.startswith(("=", "YOUR APPLICATION", "This typically", "Please see"))
            or bool(_HYDRA_DEATH.search(line) or _HYDRA_EXIT.search(line)))


if __name__ == "__main__":
    sys.exit(main())
