"""What a board is, learnt in one ssh call: its Python, CPU architecture and C library, free memory and disk,
whether it reaches the package index, what of decnn it already holds (the environment's stamp, the content
hashes of the files under ``~/.decnn``), and the laptop's address as the board sees it.

The probe is a script the board's own ``python3`` reads from stdin, written for any Python 3 so that an old
one can still say its version. :func:`check` turns the facts into the first thing that stops a deploy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from decnn.cluster.hosts import Host, HostError, Ssh

HOME_FOLDER = ".decnn"  # everything decnn puts on a board lies under ~/.decnn
MIN_PYTHON = (3, 10)
# The device environment's wheels exist for these (onnxruntime, mpich: manylinux, 64-bit only).
ARCHITECTURES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
MiB = 2**20

PROBE = r'''
import hashlib, json, os, platform, shutil, sys
home = os.path.expanduser("~")
root = os.path.join(home, ".decnn")
def hashes(folder):
    out = {}
    path = os.path.join(root, folder)
    for name in sorted(os.listdir(path)) if os.path.isdir(path) else []:
        full = os.path.join(path, name)
        if os.path.isfile(full):
            h = hashlib.sha256()
            with open(full, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            out[name] = h.hexdigest()
    return out
def memory():
    try:
        with open("/proc/meminfo") as f:
            return int(next(l.split()[1] for l in f if l.startswith("MemAvailable:"))) * 1024
    except Exception:
        return 0
def reaches_index():
    try:
        import urllib.request
        urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=3).close()
        return True
    except Exception:
        return False
def tools():
    try:
        import ensurepip, venv
        return True
    except ImportError:
        return False
def stamp():
    try:
        with open(os.path.join(root, "env", "decnn-env.json")) as f:
            return json.load(f)
    except Exception:
        return None
there = root if os.path.isdir(root) else home
folders = sys.argv[1:]
print(json.dumps({
    "python": list(sys.version_info[:3]), "machine": platform.machine(), "libc": list(platform.libc_ver()),
    "home": home, "memory_available": memory(), "disk_free": shutil.disk_usage(there).free,
    "writable": os.access(there, os.W_OK), "venv": tools(), "index": reaches_index(),
    "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    "environment": stamp(), "hashes": dict((f, hashes(f)) for f in folders),
    "ssh_connection": os.environ.get("SSH_CONNECTION", ""),
}))
'''


@dataclass(frozen=True)
class Facts:
    """One board, as its probe found it."""

    python: tuple[int, ...]
    machine: str
    libc: tuple[str, str]  # ("glibc", "2.36"), or empty strings where unknown (musl)
    home: str
    memory_available: int  # bytes (MemAvailable)
    disk_free: int  # bytes, where ~/.decnn is or would go
    writable: bool
    venv: bool  # the venv module and ensurepip (Debian: python3-venv)
    index: bool  # reaches https://pypi.org
    cpus: int
    environment: dict | None  # the installed environment's stamp (decnn.cluster.environment)
    hashes: dict[str, dict[str, str]]  # folder under ~/.decnn -> {file name: sha256}
    ssh_connection: str

    @property
    def root(self) -> str:
        """``~/.decnn`` on this board, as an absolute path."""
        return f"{self.home}/{HOME_FOLDER}"

    @property
    def architecture(self) -> str | None:
        """x86_64 or aarch64 (the wheels' names for them), None for one the device environment lacks."""
        return ARCHITECTURES.get(self.machine.lower())

    @property
    def glibc(self) -> tuple[int, int] | None:
        name, version = self.libc
        parts = version.split(".")
        return (int(parts[0]), int(parts[1])) if name == "glibc" and len(parts) >= 2 else None

    @property
    def laptop_address(self) -> str | None:
        """The laptop's address as this board sees it (the client side of the ssh connection)."""
        return self.ssh_connection.split()[0] if self.ssh_connection else None

    def describe(self) -> str:
        libc = f"glibc {self.libc[1]}" if self.glibc else "no glibc"
        return (f"Python {'.'.join(map(str, self.python))}, {self.machine}, {libc}, {self.cpus} core(s), "
                f"{self.memory_available / MiB:,.0f} MiB free memory, {self.disk_free / MiB:,.0f} MiB free disk")


def probe(ssh: Ssh, host: Host, folders: list[str] = ()) -> Facts:
    """Ask ``host`` what it is, with the content hashes of its files in ``folders`` (under ~/.decnn)."""
    out = ssh.run(host, "python3 - " + " ".join(folders), "checking it", stdin=PROBE).stdout
    try:
        data = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise HostError(host, f"its python3 did not answer the probe ({out.strip()[:100]!r})",
                        "check that `python3` there is CPython 3.10 or newer") from None
    return Facts(python=tuple(data["python"]), machine=data["machine"], libc=tuple(data["libc"]),
                 home=data["home"], memory_available=data["memory_available"], disk_free=data["disk_free"],
                 writable=data["writable"], venv=data["venv"], index=data["index"], cpus=data["cpus"],
                 environment=data["environment"], hashes=data["hashes"], ssh_connection=data["ssh_connection"])


def check(host: Host, facts: Facts, memory: int, disk: int) -> None:
    """Raise HostError for the first thing that stops this board from running its device: ``memory`` bytes it
    needs free, ``disk`` bytes the deploy still has to write there."""
    version = ".".join(map(str, facts.python))
    if tuple(facts.python[:2]) < MIN_PYTHON:
        raise HostError(host, f"its python3 is {version}, decnn needs 3.10 or newer",
                        "install a newer Python 3 there (Debian 12 and Raspberry Pi OS 12 have 3.11)")
    if facts.architecture is None:
        raise HostError(host, f"wrong architecture: {facts.machine}", "the device environment (ONNX Runtime, "
                        "MPICH) exists for 64-bit x86_64 and aarch64 only: install a 64-bit OS there")
    if facts.glibc is None:
        raise HostError(host, f"its C library is not glibc ({' '.join(facts.libc).strip() or 'unknown'})",
                        "ONNX Runtime's and MPICH's wheels need glibc (a Debian, Ubuntu or Raspberry Pi OS board)")
    if not facts.venv:
        raise HostError(host, f"Python {version} there lacks its venv module",
                        "install it (Debian: sudo apt-get install python3-venv), then run the same command again")
    if not facts.writable:
        raise HostError(host, f"permission denied: cannot write to {facts.root}",
                        f"let {host.spec} write to its home folder, or deploy as a user who can")
    if facts.disk_free < disk:
        raise HostError(host, f"disk full: {facts.disk_free / MiB:,.0f} MiB free, the deploy needs "
                        f"{disk / MiB:,.0f} MiB", f"free space in the home folder of {host.spec}, then run the "
                        "same command again")
    if facts.memory_available < memory:
        raise HostError(host, f"{facts.memory_available / MiB:,.0f} MiB of free memory, its device needs about "
                        f"{memory / MiB:,.0f} MiB", "free memory there, or give it fewer groups (decnn plan --hosts "
                        "places them within each board's memory)")
