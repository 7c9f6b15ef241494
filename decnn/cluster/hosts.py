"""The boards as the laptop reaches them: OpenSSH's ``ssh`` and ``scp``, and every failure as one line naming the
host and what to do about it.

A host is ``[user@]address`` (or a name from ``~/.ssh/config``); its rank is its place in ``--hosts``. Every call
runs in batch mode (a password prompt would hang the deploy: keys only), gives up connecting after
``CONNECT_TIMEOUT_S`` and notices a link that went silent after ``ALIVE_INTERVAL_S`` x ``ALIVE_COUNT`` seconds.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

CONNECT_TIMEOUT_S = 10
ALIVE_INTERVAL_S, ALIVE_COUNT = 2, 3
_RETRY = "then run the same command again"


@dataclass(frozen=True)
class Host:
    """One board: ``spec`` as given (``[user@]address``), ``rank`` its device."""

    spec: str
    rank: int

    def __str__(self) -> str:
        return f"host {self.rank} ({self.spec})"


def parse_hosts(text: str) -> list[Host]:
    """``a,root@b,pi@c`` -> hosts in rank order; ValueError (a usage error) for an empty or repeated one."""
    specs = [s.strip() for s in text.split(",")]
    bad = [s for s in specs if not re.fullmatch(r"([A-Za-z0-9._-]+@)?[A-Za-z0-9._:%-]+", s)]
    if not specs or bad:
        raise ValueError(f"--hosts {text!r}: give [user@]address per board, comma-separated, e.g. "
                         "--hosts pi@board0,pi@board1")
    repeated = sorted({s for s in specs if specs.count(s) > 1})
    if repeated:
        raise ValueError(f"--hosts {text!r} names {', '.join(repeated)} twice: one device per board")
    return [Host(s, r) for r, s in enumerate(specs)]


class HostError(RuntimeError):
    """A step on one host failed; the message is one line: the host, what went wrong, what to do."""

    def __init__(self, host: Host, problem: str, fix: str):
        super().__init__(f"{host}: {problem}: {fix}")
        self.host = host


def failure(host: Host, step: str, stderr: str) -> HostError:
    """The one line for ``step`` failing on ``host`` with ``stderr`` (ssh's, scp's or the remote command's)."""
    text = " ".join(stderr.split())
    said = _last_line(stderr)
    user = host.spec
    if re.search(r"python3: (command )?not found", text):
        return HostError(host, "no Python 3 there", "install Python 3.10 or newer with its venv module "
                         f"(Debian: sudo apt-get install python3 python3-venv), {_RETRY}")
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return HostError(host, f"disk full while {step}", f"free space in the home folder of {user} "
                         f"(ssh {user} df -h ~), {_RETRY}")
    if re.search(r"Permission denied \((publickey|password|keyboard)", text) or "Too many authentication" in text:
        return HostError(host, "ssh refused the login", f"install your key there (ssh-copy-id {user}) and check the "
                         f"user name, {_RETRY}")
    if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return HostError(host, "its host key is unknown or has changed", f"connect once by hand (ssh {user}) to "
                         f"check and accept it, {_RETRY}")
    if "Could not resolve hostname" in text:
        return HostError(host, "its name does not resolve", f"check the name, or give its address, {_RETRY}")
    if re.search(r"Connection (timed out|refused|closed|reset)|No route to host|Network is unreachable|"
                 r"Timeout, server not responding|Broken pipe|lost connection|Connection to .* closed", text):
        return HostError(host, f"unreachable while {step} ({said})", f"check that it is on, on the network and "
                         f"running sshd, {_RETRY}")
    if "Permission denied" in text or "Read-only file system" in text:
        return HostError(host, f"permission denied while {step} ({said})", f"let {user} write to its home folder "
                         f"(~/.decnn), or deploy as a user who can, {_RETRY}")
    return HostError(host, f"{step} failed ({said or 'no message'})", f"fix that on the host, {_RETRY}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Warning:")]
    return lines[-1][:200] if lines else ""


class Ssh:
    """The system's OpenSSH client: ``ssh`` runs a command on a host, ``scp`` copies to and from it.

    ``config``: an ssh_config file to use instead of ``~/.ssh/config`` (``ssh -F``)."""

    def __init__(self, config: str | Path | None = None):
        self.config = str(config) if config else None

    def options(self) -> list[str]:
        """The options every ssh and scp call takes (also mpiexec's proxies' ssh)."""
        config = ["-F", self.config] if self.config else []
        return [*config, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
                "-o", f"ServerAliveInterval={ALIVE_INTERVAL_S}", "-o", f"ServerAliveCountMax={ALIVE_COUNT}"]

    def run(self, host: Host, command: str, step: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        """``command`` (a shell command line) on ``host``, its output captured; HostError if it or ssh fails."""
        proc = subprocess.run(["ssh", *self.options(), host.spec, command], input=stdin, capture_output=True,
                              text=True)
        if proc.returncode:
            raise failure(host, step, proc.stderr)
        return proc

    def copy(self, host: Host, files: list[Path], remote_dir: str, step: str) -> None:
        """Copy local ``files`` into ``remote_dir`` on ``host`` (which exists)."""
        if files:
            self._scp([*map(str, files), f"{host.spec}:{remote_dir}/"], host, step)

    def fetch(self, host: Host, remote_paths: list[str], local_dir: Path, step: str) -> None:
        """Copy ``remote_paths`` of ``host`` into the local ``local_dir``."""
        self._scp([*(f"{host.spec}:{p}" for p in remote_paths), str(local_dir)], host, step)

    def _scp(self, args: list[str], host: Host, step: str) -> None:
        proc = subprocess.run(["scp", "-q", "-p", *self.options(), *args], capture_output=True, text=True)
        if proc.returncode:
            raise failure(host, step, proc.stderr)
