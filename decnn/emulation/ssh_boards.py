"""Boards reached over OpenSSH, on this machine: a small cluster for ``decnn deploy`` and ``decnn plan --hosts``.

Each board is a network namespace behind an emulated link (:class:`decnn.emulation.links.EmulatedLink`)
with Debian's ``sshd`` listening on its address, in a mount namespace of its own in which the home folder (/root)
is a private directory: what the laptop copies there lands in that directory, not in this machine's /root. Each
board's sshd, and so everything a session runs there, is held to its share of a core
(:class:`decnn.emulation.quota.CpuQuota`). The laptop is the link's host 0. The keys (the laptop's, each board's
host key) are made here; ``ssh_config`` names the boards ``board0``, ``board1``, ... A board has Python (this
machine's /usr/bin/python3) and sshd, and reaches no package index: none of this machine's pip settings either.

    with SshBoards([1.0, 0.4], link="1gbit") as boards:
        boards.laptop(["decnn", "deploy", "shards/", "--hosts", ",".join(boards.hosts), "--ssh-config",
                       str(boards.ssh_config)])

Needs root and openssh-server (``apt-get install -y openssh-server``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from decnn.common.processes import die_with_parent
from decnn.emulation.links import EmulatedLink
from decnn.emulation.netns import LinkError, command
from decnn.emulation.quota import CpuQuota

SSHD = Path("/usr/sbin/sshd")
_PRIVSEP = Path("/run/sshd")  # sshd's privilege separation folder, which the package's boot scripts make
_START_TIMEOUT_S = 20.0


def ssh_boards_available() -> tuple[bool, str]:
    """(True, "") if SshBoards can run here, else (False, reason)."""
    if os.geteuid() != 0:
        return False, "emulated ssh boards need root (namespaces, cgroups)"
    if not SSHD.exists() or shutil.which("ssh") is None:
        return False, "emulated ssh boards need OpenSSH's server and client (apt-get install -y openssh-server)"
    return True, ""


class SshBoards:
    """``len(cpu)`` boards, board i held to ``cpu[i]`` of a core, joined by ``link`` (a tbf rate such as "1gbit";
    None: unshaped veths). A context manager: leaving it stops the sshds and what their sessions still run, and
    removes the namespaces, cgroups and keys."""

    def __init__(self, cpu: list[float], link: str | None = None, name_prefix: str = "decnnssh"):
        if not cpu:
            raise ValueError("give each board its share of a core, e.g. cpu=[1.0, 0.4]")
        self.cpu, self.link_rate, self.name_prefix = list(cpu), link, name_prefix
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> SshBoards:
        ok, reason = ssh_boards_available()
        if not ok:
            raise LinkError(reason)
        with contextlib.ExitStack() as stack:
            self.tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="decnn-ssh-boards-")))
            if not _PRIVSEP.exists():
                _PRIVSEP.mkdir(mode=0o755)
                stack.callback(shutil.rmtree, _PRIVSEP, ignore_errors=True)
            self.quotas = [stack.enter_context(CpuQuota(f)) for f in self.cpu]
            self.net = stack.enter_context(EmulatedLink(self.link_rate, len(self.cpu) + 1, self.name_prefix))
            key = self._keygen(self.tmp / "laptop" / "id_ed25519")
            self.homes, self.sshds, known = [], [], []
            for i in range(len(self.cpu)):
                home, host_key = self._board(i, key)
                self.homes.append(home)
                known.append(f"{self.address(i)} {host_key.with_suffix('.pub').read_text().strip()}")
            for i in range(len(self.cpu)):
                self._wait_listening(i)
            (self.tmp / "known_hosts").write_text("\n".join(known) + "\n")
            self.ssh_config = self.tmp / "ssh_config"
            self.ssh_config.write_text("".join(f"Host board{i}\n  HostName {self.address(i)}\n"
                                               for i in range(len(self.cpu))) + (
                f"Host *\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
                f"  UserKnownHostsFile {self.tmp / 'known_hosts'}\n  GlobalKnownHostsFile /dev/null\n"
                "  StrictHostKeyChecking yes\n  LogLevel ERROR\n"))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @property
    def hosts(self) -> list[str]:
        """The boards as ``decnn deploy --hosts`` names them (through :attr:`ssh_config`)."""
        return [f"root@board{i}" for i in range(len(self.cpu))]

    def address(self, board: int) -> str:
        return self.net.hosts[board + 1].address

    def laptop(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        """``argv`` on the laptop (the link's host 0), ``subprocess.run``'s keywords."""
        return self.net.run(0, argv, **kw)

    def laptop_popen(self, argv: list[str], **kw) -> subprocess.Popen:
        return self.net.popen(0, argv, **kw)

    def cut(self, board: int) -> None:
        """Take ``board``'s link down: it stops answering, as a board pulled off the network does."""
        command(["ip", "-n", self.net.hosts[board + 1].netns, "link", "set", self.net.hosts[board + 1].ifname,
                 "down"])

    def reconnect(self, board: int) -> None:
        command(["ip", "-n", self.net.hosts[board + 1].netns, "link", "set", self.net.hosts[board + 1].ifname, "up"])

    # -- setting a board up -----------------------------------------------------------------------------------

    @staticmethod
    def _keygen(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.parent.name, "-f", str(path)],
                       check=True, capture_output=True)
        return path

    def _board(self, i: int, laptop_key: Path) -> tuple[Path, Path]:
        """Board i's home folder, host key and sshd (started in its namespaces and quota)."""
        folder = self.tmp / f"board{i}"
        home = folder / "home"
        (home / ".ssh").mkdir(parents=True, mode=0o700)
        home.chmod(0o700)
        (home / ".ssh" / "authorized_keys").write_text(laptop_key.with_suffix(".pub").read_text())
        host_key = self._keygen(folder / "ssh_host_ed25519_key")
        config = folder / "sshd_config"
        config.write_text(
            f"ListenAddress {self.address(i)}\nPort 22\nHostKey {host_key}\nPidFile {folder / 'sshd.pid'}\n"
            "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nX11Forwarding no\nSubsystem sftp internal-sftp\n"
            "MaxStartups 100\nMaxSessions 100\n"
            # A fresh board: none of this machine's pip settings (its local package mirror, its constraints).
            "SetEnv PIP_CONFIG_FILE=/dev/null\n")
        quota = self.quotas[i]
        script = f"mount --bind {home} /root && exec {SSHD} -D -e -f {config}"
        with (folder / "sshd.log").open("w") as log:
            # sshd and all it starts run in the board's quota (joined before `ip netns exec` hides the cgroups).
            self.sshds.append(self.net.popen(
                i + 1, ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=lambda: (die_with_parent(), quota.join())))
        return home, host_key

    def _wait_listening(self, i: int) -> None:
        """Until board i's sshd says that it listens (or has died)."""
        log, proc = self.tmp / f"board{i}" / "sshd.log", self.sshds[i]
        deadline = time.monotonic() + _START_TIMEOUT_S
        while "Server listening" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LinkError(f"board {i}'s sshd did not start: {log.read_text().strip()[-300:]}")
            time.sleep(0.05)
