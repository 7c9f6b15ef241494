"""Emulated edge links: network namespaces joined by a bridge, with tbf-shaped egress.

Each emulated device is a network namespace with one veth interface plugged into a bridge that lives in
a namespace of its own, so nothing touches the host's network. Every host's egress is shaped with
``tc ... tbf rate <rate>`` (netem is not available here; tbf is). Needs root and iproute2::

    with EmulatedLink("20mbit", num_hosts=2) as link:
        server = link.popen(1, ["python", "-m", "http.server", "--bind", link.hosts[1].address])
        link.run(0, ["python", "client.py", link.hosts[1].address], check=True)

Processes started through the link get ``GLOO_SOCKET_IFNAME`` set to the host's interface: inside a
namespace the machine's hostname still resolves to 127.0.0.1, which gloo would otherwise bind to.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from decnn.process import die_with_parent

__all__ = [
    "EmulatedLink",
    "Host",
    "LinkError",
    "cleanup_stale",
    "links_available",
    "parse_rate",
]

IFNAME = "veth0"  # the interface inside every host namespace
DEFAULT_SUBNET = "10.213.0.0/24"
_BRIDGE = "br0"
_MIN_BURST = 64 * 1024  # bytes; at least one full GSO segment so large skbs are never split
_BURST_SECONDS = 0.001  # and at least 1 ms worth of the rate
_LATENCY = "100ms"  # longest a packet may wait in the tbf queue before it is dropped
_STOP_TIMEOUT = 5.0

_RATE_UNITS = {
    "bit": 1,
    "kbit": 10**3,
    "mbit": 10**6,
    "gbit": 10**9,
    "tbit": 10**12,
    "bps": 8,
    "kbps": 8 * 10**3,
    "mbps": 8 * 10**6,
    "gbps": 8 * 10**9,
    "tbps": 8 * 10**12,
}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_RATE_FORMS = (
    "a positive number with a tc unit: bit, kbit, mbit, gbit, tbit (bits/s, powers of 1000) or "
    "bps, kbps, mbps, gbps, tbps (bytes/s), e.g. '20mbit', '1gbit', '12.5mbps'; a bare number is bits/s"
)
_ids = itertools.count()

_PORT = 5201  # the throughput probe's port, inside the namespaces only
_SERVER = f"""
import socket, sys, time
addr, n = sys.argv[1], int(sys.argv[2])
srv = socket.create_server((addr, {_PORT}))
print("ready", flush=True)
conn, _ = srv.accept()
got, first = 0, None
while got < n:
    chunk = conn.recv(1 << 20)
    if not chunk:
        break
    first = first or time.perf_counter()
    got += len(chunk)
if got < n:
    sys.exit(f"received {{got}} of {{n}} bytes")
print(got * 8 / (time.perf_counter() - first), flush=True)
conn.sendall(b"k")
"""
_CLIENT = f"""
import socket, sys
conn = socket.create_connection((sys.argv[1], {_PORT}), timeout=60)
conn.sendall(b"x" * int(sys.argv[2]))
conn.recv(1)
"""


class LinkError(RuntimeError):
    """An ``ip``/``tc`` command failed; the message names the command and its stderr."""


def parse_rate(rate: str | float) -> float:
    """Return ``rate`` in bits per second; accepts tc's forms ('20mbit', '1gbit', '12.5mbps', 1e6)."""
    if isinstance(rate, bool) or not isinstance(rate, (str, int, float)):
        raise TypeError(f"rate must be {_RATE_FORMS}; got {rate!r}")
    if isinstance(rate, str):
        m = _RATE_RE.match(rate)
        unit = m.group(2).lower() if m else None
        if unit is None or (unit and unit not in _RATE_UNITS):
            raise ValueError(f"rate must be {_RATE_FORMS}; got {rate!r}")
        bits = float(m.group(1)) * _RATE_UNITS.get(unit, 1)
    else:
        bits = float(rate)
    if not bits > 0 or bits == float("inf"):
        raise ValueError(f"rate must be {_RATE_FORMS}; got {rate!r}")
    return bits


def _cmd(argv: list[str]) -> str:
    """Run one ``ip``/``tc`` command, return its stdout, raise LinkError naming it on failure."""
    try:
        res = subprocess.run(argv, check=True, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise LinkError(f"`{' '.join(argv)}` failed: {e}") from None
    except subprocess.CalledProcessError as e:
        err = (e.stderr or e.stdout or "").strip()
        raise LinkError(f"`{' '.join(argv)}` failed (exit {e.returncode}): {err}") from None
    return res.stdout


def _netns_names() -> list[str]:
    """Names from ``ip netns list`` (whose lines look like 'name (id: 3)')."""
    return [line.split()[0] for line in _cmd(["ip", "netns", "list"]).splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str = "decnn") -> list[str]:
    """Delete namespaces named ``<prefix>-<pid>-...`` whose creating process is gone; return their names."""
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)-\d+-")
    removed = []
    for name in _netns_names():
        m = pattern.match(name)
        if m and not _pid_alive(int(m.group(1))):
            _cmd(["ip", "netns", "del", name])
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
    ns = f"decnn-{os.getpid()}-{next(_ids)}-probe"
    try:
        _cmd(["ip", "netns", "add", ns])
        try:
            _cmd(["ip", "-n", ns, "link", "add", "name", "p0", "type", "veth", "peer", "name", "p1"])
            _cmd(["tc", "-n", ns, "qdisc", "add", "dev", "p0", "root", "tbf", "rate", "1mbit",
                  "burst", "64kb", "latency", "100ms"])
        finally:
            _cmd(["ip", "netns", "del", ns])
    except LinkError as e:
        return False, f"cannot set up an emulated link here: {e}"
    return True, ""


@dataclass(frozen=True)
class Host:
    """One emulated device: its namespace, interface and address."""

    index: int
    netns: str
    address: str
    ifname: str = IFNAME
    env: dict[str, str] = field(default_factory=dict)


class EmulatedLink:
    """``num_hosts`` namespaces on one bridge, each host's egress shaped to ``rate`` (None: unshaped).

    tbf lets ``burst_bytes`` (default: 64 KiB or 1 ms at the rate, whichever is more) through at full
    speed after the link has been idle long enough to refill them; a cost model should count that.

    Use as a context manager; leaving it (also on an exception, KeyboardInterrupt, or SIGTERM, which
    it turns into SystemExit while open if nothing else handles it) stops processes still running
    from :meth:`popen` and deletes every namespace it created. Nothing outlives a creator killed by SIGKILL
    either: processes from :meth:`popen` die with it, and entering a link first deletes the namespaces of
    creators that are gone (:func:`cleanup_stale`).
    """

    def __init__(
        self,
        rate: str | None,
        num_hosts: int = 2,
        name_prefix: str = "decnn",
        subnet: str = DEFAULT_SUBNET,
        burst: int | None = None,
    ):
        if rate is not None and str(rate).lower() == "unshaped":
            rate = None
        self.rate_bps = None if rate is None else parse_rate(rate)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name_prefix):
            raise ValueError(f"name_prefix must match [A-Za-z0-9_.-]+; got {name_prefix!r}")
        net = ipaddress.ip_network(subnet)
        if not 1 <= num_hosts <= net.num_addresses - 2:
            raise ValueError(f"num_hosts must be in 1..{net.num_addresses - 2} for {subnet}; got {num_hosts}")
        if burst is not None and not (isinstance(burst, int) and burst > 0):
            raise ValueError(f"burst must be a positive number of bytes; got {burst!r}")
        if self.rate_bps is None:
            self.burst_bytes = None
        else:
            self.burst_bytes = burst or max(_MIN_BURST, int(self.rate_bps / 8 * _BURST_SECONDS))
        self.prefixlen = net.prefixlen
        self.name_prefix = name_prefix
        base = f"{name_prefix}-{os.getpid()}-{next(_ids)}"
        self.bridge_netns = f"{base}-br"
        addrs = itertools.islice(net.hosts(), num_hosts)
        self.hosts = [
            Host(i, f"{base}-h{i}", str(a), env={"GLOO_SOCKET_IFNAME": IFNAME})
            for i, a in enumerate(addrs)
        ]
        self._created: list[str] = []
        self._procs: list[tuple[subprocess.Popen, bool]] = []
        self._prev_sigterm = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and (
            signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        ):
            self._prev_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            cleanup_stale(self.name_prefix)
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_netns(self, name: str) -> None:
        _cmd(["ip", "netns", "add", name])
        self._created.append(name)
        _cmd(["ip", "-n", name, "link", "set", "lo", "up"])

    def _setup(self) -> None:
        br = self.bridge_netns
        self._add_netns(br)
        _cmd(["ip", "-n", br, "link", "add", "name", _BRIDGE, "type", "bridge"])
        _cmd(["ip", "-n", br, "link", "set", _BRIDGE, "addrgenmode", "none", "up"])
        for h in self.hosts:
            self._add_netns(h.netns)
            port = f"h{h.index}"
            # Both ends are created straight in their namespaces; addrgenmode none keeps IPv6
            # link-local chatter off the shaped link and leaves the IPv4 address the only one.
            _cmd(["ip", "-n", br, "link", "add", "name", port, "type", "veth", "peer", "name", h.ifname,
                  "netns", h.netns])
            _cmd(["ip", "-n", br, "link", "set", port, "master", _BRIDGE, "addrgenmode", "none", "up"])
            _cmd(["ip", "-n", h.netns, "addr", "add", f"{h.address}/{self.prefixlen}", "dev", h.ifname])
            _cmd(["ip", "-n", h.netns, "link", "set", h.ifname, "addrgenmode", "none", "up"])
            if self.rate_bps is not None:
                _cmd(["tc", "-n", h.netns, "qdisc", "add", "dev", h.ifname, "root", "tbf",
                      "rate", f"{int(self.rate_bps)}bit", "burst", str(self.burst_bytes),
                      "latency", _LATENCY])

    def _argv(self, i: int, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[i].netns, *map(str, argv)]

    def _env(self, i: int, env: dict[str, str] | None) -> dict[str, str]:
        """The host's variables over the inherited environment, or under an explicit ``env``."""
        if env is None:
            return {**os.environ, **self.hosts[i].env}
        return {**self.hosts[i].env, **env}

    def popen(self, i: int, argv: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
        """Start ``argv`` inside host ``i``'s namespace, in a session of its own by default, so that
        closing the link stops it together with its children (a torchrun agent's workers); it is killed if
        this process dies."""
        kw.setdefault("start_new_session", True)
        kw.setdefault("preexec_fn", die_with_parent)
        proc = subprocess.Popen(self._argv(i, argv), env=self._env(i, env), **kw)
        self._procs.append((proc, kw["start_new_session"]))
        return proc

    def run(self, i: int, argv: list[str], env: dict[str, str] | None = None, check: bool = False, **kw):
        """``subprocess.run`` of ``argv`` inside host ``i``'s namespace."""
        return subprocess.run(self._argv(i, argv), env=self._env(i, env), check=check, **kw)

    def torchrun_argv(self, i: int, argv: list[str], port: int = 29400, nproc_per_node: int = 1,
                      run_id: str = "decnn") -> list[str]:
        """``python -m torch.distributed.run ... argv`` for host ``i``, c10d rendezvous on host 0.

        Inside a namespace torchrun can neither tell that it owns the rendezvous endpoint nor find
        its own address (the hostname resolves to 127.0.0.1), hence ``is_host`` and ``--local-addr``.
        """
        return [
            sys.executable, "-m", "torch.distributed.run",
            "--nnodes", str(len(self.hosts)), "--nproc-per-node", str(nproc_per_node),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{self.hosts[0].address}:{port}",
            "--rdzv-id", run_id, "--rdzv-conf", f"is_host={int(i == 0)}",
            "--local-addr", self.hosts[i].address,
            *map(str, argv),
        ]

    def measure_bps(self, src: int = 0, dst: int = 1, nbytes: int = 2_500_000, timeout: float = 60.0
                    ) -> float:
        """Bits/s of one TCP transfer of ``nbytes`` from host ``src`` to ``dst``, timed by the receiver
        from its first byte to its last (so connection setup is not counted)."""
        addr = self.hosts[dst].address
        server = self.popen(dst, [sys.executable, "-c", _SERVER, addr, nbytes],
                            stdout=subprocess.PIPE, text=True)
        try:
            if server.stdout.readline().strip() != "ready":
                raise LinkError(f"throughput server on host {dst} did not start")
            self.run(src, [sys.executable, "-c", _CLIENT, addr, nbytes], check=True, timeout=timeout)
            out, _ = server.communicate(timeout=timeout)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        if server.returncode != 0:
            raise LinkError(f"throughput server on host {dst} failed (exit {server.returncode})")
        return float(out)

    def close(self) -> None:
        """Stop leftover processes and delete the namespaces; safe to call twice."""
        self._stop_processes()
        if self._prev_sigterm is not None:
            signal.signal(signal.SIGTERM, self._prev_sigterm)
            self._prev_sigterm = None
        errors = []
        while self._created:
            name = self._created.pop()
            try:
                _cmd(["ip", "netns", "del", name])
            except LinkError as e:
                errors.append(str(e))
        if errors:
            raise LinkError("teardown incomplete: " + "; ".join(errors))

    def _stop_processes(self) -> None:
        """SIGTERM every started process (its whole session where it has one), SIGKILL after a grace time."""
        procs, self._procs = self._procs, []
        for proc, grouped in procs:
            _signal(proc, grouped, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT
        for proc, grouped in procs:
            while _alive(proc, grouped) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(proc, grouped):
                _signal(proc, grouped, signal.SIGKILL)
            proc.wait()


def _signal(proc: subprocess.Popen, grouped: bool, sig: int) -> None:
    try:
        if grouped:
            os.killpg(proc.pid, sig)
        elif proc.poll() is None:
            proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _alive(proc: subprocess.Popen, grouped: bool) -> bool:
    """Whether ``proc``, or with ``grouped`` any process left in its process group, still runs.

    Reads /proc rather than probing with ``killpg(pgid, 0)``: that also succeeds for zombies, which a
    slow init may leave unreaped for seconds.
    """
    if proc.poll() is None:
        return True
    if not grouped:
        return False
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                state, _ppid, pgrp = f.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError):
            continue
        if int(pgrp) == proc.pid and state != "Z":
            return True
    return False


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)
