"""Emulated edge links: network namespaces joined by a bridge, with tbf-shaped egress; the processes in them.

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

import ipaddress
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from decnn.common import processes
from decnn.common.processes import die_with_parent
from decnn.emulation.netns import LinkError, cleanup_stale, command, namespace_name
from decnn.emulation.rates import parse_rate

__all__ = ["EmulatedLink", "Host"]

IFNAME = "veth0"  # the interface inside every host namespace
DEFAULT_SUBNET = "10.213.0.0/24"
_BRIDGE = "br0"
_MIN_BURST = 64 * 1024  # bytes; at least one full GSO segment so large skbs are never split
_BURST_SECONDS = 0.001  # and at least 1 ms worth of the rate
_LATENCY = "100ms"  # longest a packet may wait in the tbf queue before it is dropped
_STOP_TIMEOUT = 5.0


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
        base = namespace_name(name_prefix)
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
        command(["ip", "netns", "add", name])
        self._created.append(name)
        command(["ip", "-n", name, "link", "set", "lo", "up"])

    def _setup(self) -> None:
        br = self.bridge_netns
        self._add_netns(br)
        command(["ip", "-n", br, "link", "add", "name", _BRIDGE, "type", "bridge"])
        command(["ip", "-n", br, "link", "set", _BRIDGE, "addrgenmode", "none", "up"])
        for h in self.hosts:
            self._add_netns(h.netns)
            port = f"h{h.index}"
            # Both ends are created straight in their namespaces; addrgenmode none keeps IPv6
            # link-local chatter off the shaped link and leaves the IPv4 address the only one.
            command(["ip", "-n", br, "link", "add", "name", port, "type", "veth", "peer", "name", h.ifname,
                  "netns", h.netns])
            command(["ip", "-n", br, "link", "set", port, "master", _BRIDGE, "addrgenmode", "none", "up"])
            command(["ip", "-n", h.netns, "addr", "add", f"{h.address}/{self.prefixlen}", "dev", h.ifname])
            command(["ip", "-n", h.netns, "link", "set", h.ifname, "addrgenmode", "none", "up"])
            if self.rate_bps is not None:
                command(["tc", "-n", h.netns, "qdisc", "add", "dev", h.ifname, "root", "tbf",
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
        probe = [sys.executable, "-m", "decnn.emulation.tcp_probe"]
        server = self.popen(dst, [*probe, "receive", addr, nbytes], stdout=subprocess.PIPE, text=True)
        try:
            if server.stdout.readline().strip() != "ready":
                raise LinkError(f"throughput server on host {dst} did not start")
            self.run(src, [*probe, "send", addr, nbytes], check=True, timeout=timeout)
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
                command(["ip", "netns", "del", name])
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
    return processes.group_alive(proc.pid)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)
