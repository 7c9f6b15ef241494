"""``decnn edge``: a split on devices without torch, launched by ``mpiexec``; failures in one line.

    decnn edge shards/ --devices 2 --verify                      # one host: MPI over shared memory
    decnn edge shards/ --devices 2 --transport tcp               # one host, forced over TCP
    decnn edge shards/ --hosts board0,board1 --batch 1           # two hosts (ssh, same paths on each)
    decnn edge shards/ --single                                  # the whole model on one device

Every argument after the folder that this command does not know goes to each device's run
(``python -m decnn.edge.run --help``). The command checks the folder first, starts ``mpiexec``, passes the
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

from decnn.edge.bundle import BundleError, read_manifest
from decnn.edge.run import IDENTITY
from decnn.exitcodes import INTERRUPTED, RUNTIME, USAGE

# On one host MPICH moves data through shared memory; these make UCX, its network layer, use TCP instead.
TCP_ENV = {"MPIR_CVAR_NOLOCAL": "1", "UCX_TLS": "tcp,self"}
_IDENTITY = re.compile(re.escape(IDENTITY) + r" rank (\d+) pid (\d+) host ([^\s\[]+)\n?")
_HYDRA_DEATH = re.compile(r"PID (\d+) RUNNING AT (\S+)")
_HYDRA_EXIT = re.compile(r"EXIT (?:CODE|STRING): (.+)")


def parser() -> argparse.ArgumentParser:
    summary, examples = __doc__.split("\n\n")[:2]
    p = argparse.ArgumentParser(prog="decnn edge", description=summary, epilog=examples,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", help="a folder written by `decnn export CHECKPOINT --onnx`")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--devices", type=int, help="processes on this host (default: the export's device count)")
    where.add_argument("--hosts", help="comma-separated hosts, one device each, in rank order (mpiexec -hosts)")
    where.add_argument("--single", action="store_true", help="the whole model's graph on one process")
    p.add_argument("--transport", choices=("auto", "tcp"), default="auto",
                   help="auto: shared memory between processes of one host, TCP between hosts; tcp: TCP always")
    p.add_argument("--iface", help="the network interface MPI uses (e.g. eth0)")
    p.add_argument("--mpiexec", default=None, help="the mpiexec to run (default: the one beside this Python)")
    p.add_argument("--launcher-exec", help=argparse.SUPPRESS)  # mpiexec -launcher-exec: runs a proxy on a host
    return p


def command(args, run_args: list[str]) -> tuple[list[str], str]:
    """The mpiexec command line and the transport label the run reports."""
    manifest = read_manifest(args.directory)
    hosts = args.hosts.split(",") if args.hosts else []
    exported = len(manifest["placement"])
    devices = 1 if args.single else len(hosts) or args.devices or exported
    if not args.single and devices != exported:
        raise BundleError(f"{args.directory} is exported for {exported} devices, not {devices}: pass --devices "
                          f"{exported}, or export again with `decnn export CHECKPOINT --devices {devices} --onnx ...`")
    tcp = args.transport == "tcp" or len(set(hosts)) > 1
    mpiexec = args.mpiexec or shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    cmd = [mpiexec, "-n", str(devices)]
    if hosts:
        cmd += ["-hosts", ",".join(hosts)]
    if args.launcher_exec:
        cmd += ["-launcher", "ssh", "-launcher-exec", args.launcher_exec]
    env = {"DECNN_EDGE_LAUNCHER": "1", **(TCP_ENV if tcp else {})}
    if args.iface:
        cmd += ["-iface", args.iface]
        env["UCX_NET_DEVICES"] = args.iface
    for key, value in env.items():
        cmd += ["-genv", key, value]
    transport = "mpi-tcp" if tcp else "mpi-shm"
    cmd += [sys.executable, "-m", "decnn.edge.run", str(args.directory), "--transport", transport,
            *(["--single"] if args.single else []), *run_args]
    return cmd, transport


def main(argv: list[str] | None = None) -> int:
    args, run_args = parser().parse_known_args(argv)
    try:
        cmd, _ = command(args, run_args)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE
    return supervise(cmd)


def supervise(cmd: list[str]) -> int:
    """Run mpiexec; pass the devices' lines through; mpiexec's own report of a failure becomes one line."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    ranks: dict[str, tuple[str, str]] = {}  # pid -> (rank, host)
    hydra: list[str] = []
    seen = {"error": False, "interrupted": False}

    def read(stream, out) -> None:
        for line in stream:
            for rank, pid, host in _IDENTITY.findall(line):
                ranks[pid] = (rank, host)
            line = _IDENTITY.sub("", line)
            if _hydra(line):
                hydra.append(line)
            elif line.strip() == "interrupted":
                seen["interrupted"] = True
            elif line.strip():
                seen["error"] |= line.startswith("error:")
                out.write(line)
                out.flush()

    stdout = threading.Thread(target=read, args=(proc.stdout, sys.stdout), daemon=True)
    stdout.start()
    try:
        read(proc.stderr, sys.stderr)
        code = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        seen["interrupted"], code = True, INTERRUPTED
    stdout.join(timeout=5)
    if seen["interrupted"]:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    if code in (0, USAGE):
        return code
    if not seen["error"]:
        print(f"error: {_death(hydra, ranks, code)}", file=sys.stderr)
    return RUNTIME


def _hydra(line: str) -> bool:
    """A line of mpiexec's own failure report."""
    return (line.startswith(("=", "YOUR APPLICATION", "This typically", "Please see"))
            or bool(_HYDRA_DEATH.search(line) or _HYDRA_EXIT.search(line)))


def _death(hydra: list[str], ranks: dict[str, tuple[str, str]], code: int) -> str:
    """mpiexec's report ("PID 123 RUNNING AT host", "EXIT CODE: 9") in the project's words."""
    text = "".join(hydra)
    death, exit_ = _HYDRA_DEATH.search(text), _HYDRA_EXIT.search(text)
    if death is None:
        return f"a device process failed (mpiexec exited with code {code})"
    rank, host = ranks.get(death.group(1), ("?", death.group(2)))
    cause = exit_.group(1).strip() if exit_ else f"code {code}"
    if cause.isdigit():
        number = int(cause)
        cause = f"killed by {signal.Signals(number).name}" if 0 < number < 32 and number != 1 else f"exit code {number}"
    return f"rank {rank} (host {host}) died ({cause}); mpiexec ended the other devices"


if __name__ == "__main__":
    sys.exit(main())
