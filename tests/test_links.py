"""Emulated edge links: rate parsing everywhere; namespaces, tbf shaping and gloo across them as root."""

import os
import subprocess
import sys
import textwrap
import time

import pytest

from decnn.emulation.links import EmulatedLink
from decnn.emulation.netns import cleanup_stale, links_available
from decnn.emulation.rates import parse_rate

PREFIX = "decnntest"  # keeps these tests' namespaces apart from real runs


@pytest.fixture
def need_links():
    ok, reason = links_available()
    if not ok:
        pytest.skip(reason)


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def process_state(pid: int | str) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@pytest.mark.parametrize(
    ("text", "bps"),
    [("20mbit", 20e6), ("1gbit", 1e9), ("100Mbit", 100e6), ("512kbit", 512e3), ("12.5mbps", 100e6),
     ("1000", 1000.0), (" 3 gbit ", 3e9), (2e6, 2e6)],
)
def test_parse_rate(text, bps):
    assert parse_rate(text) == pytest.approx(bps)


@pytest.mark.parametrize("bad", ["", "fast", "20 mb", "-5mbit", "0mbit", "1e6bit", "20mibit", "inf"])
def test_parse_rate_rejects_with_accepted_forms(bad):
    with pytest.raises(ValueError, match="kbit, mbit, gbit"):
        parse_rate(bad)


def test_parse_rate_rejects_non_numbers():
    with pytest.raises(TypeError):
        parse_rate(None)


def test_unavailable_without_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    ok, reason = links_available.__wrapped__()
    assert not ok and "root" in reason


def test_bad_arguments_fail_before_touching_the_network():
    with pytest.raises(ValueError, match="mbit"):
        EmulatedLink("fast")
    with pytest.raises(ValueError, match="num_hosts"):
        EmulatedLink(None, num_hosts=0)
    with pytest.raises(ValueError, match="name_prefix"):
        EmulatedLink(None, name_prefix="a b")
    with pytest.raises(ValueError, match="burst"):
        EmulatedLink("20mbit", burst=0)
    assert EmulatedLink("20mbit").burst_bytes == 64 * 1024
    assert EmulatedLink("1gbit").burst_bytes == 125_000


@pytest.mark.netns
def test_teardown_leaves_nothing_even_after_an_exception(need_links):
    for exc in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(exc), EmulatedLink("20mbit", num_hosts=3, name_prefix=PREFIX) as link:
            names = {link.bridge_netns, *(h.netns for h in link.hosts)}
            assert names <= netns_names()
            assert len({h.address for h in link.hosts}) == 3
            raise exc
        assert not names & netns_names()


@pytest.mark.netns
def test_cleanup_stale_removes_namespaces_of_dead_runs_only(need_links):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, live = f"{PREFIX}-{dead.pid}-0-h0", f"{PREFIX}-{os.getpid()}-999-h0"
    for name in (stale, live):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert cleanup_stale(PREFIX) == [stale]
        assert stale not in netns_names() and live in netns_names()
    finally:
        for name in {stale, live} & netns_names():
            subprocess.run(["ip", "netns", "del", name], check=True)


@pytest.mark.netns
def test_sigterm_tears_down(need_links):
    # `import decnn` does not load torch, so this child starts in a fraction of a second.
    code = textwrap.dedent(f"""
        import time
        from decnn.emulation.links import EmulatedLink
        with EmulatedLink(None, name_prefix={PREFIX!r}) as link:
            print(link.bridge_netns, *(h.netns for h in link.hosts), flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    names = set(proc.stdout.readline().split())
    assert len(names) == 3 and names <= netns_names()
    proc.terminate()
    assert proc.wait(timeout=10) == 128 + 15
    assert not names & netns_names()


@pytest.mark.netns
def test_a_creator_killed_by_sigkill_leaves_nothing_after_the_next_link(need_links):
    code = textwrap.dedent(f"""
        import time
        from decnn.emulation.links import EmulatedLink
        with EmulatedLink(None, name_prefix={PREFIX!r}) as link:
            child = link.popen(1, ["sleep", "120"])
            print(child.pid, link.bridge_netns, *(h.netns for h in link.hosts), flush=True)
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child, *names = proc.stdout.readline().split()
    assert set(names) <= netns_names()
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while process_state(child) not in ("gone", "Z") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_state(child) in ("gone", "Z")  # the process it started died with it
    assert set(names) <= netns_names()  # namespaces outlive a SIGKILL ...
    with EmulatedLink(None, name_prefix=PREFIX):
        pass
    assert not set(names) & netns_names()  # ... until the next link removes those of dead creators


@pytest.mark.netns
def test_close_stops_started_processes_and_their_children(need_links):
    with EmulatedLink(None, name_prefix=PREFIX) as link:
        proc = link.popen(0, ["sh", "-c", "sleep 60 & sleep 60"])
        time.sleep(0.2)
    assert proc.returncode is not None
    states = subprocess.run(["ps", "-o", "stat=", "-g", str(proc.pid)], capture_output=True, text=True)
    assert all(s.startswith("Z") for s in states.stdout.split()), states.stdout  # zombies await init


@pytest.mark.netns
def test_run_sees_own_address_and_gloo_interface(need_links):
    with EmulatedLink(None, name_prefix=PREFIX) as link:
        h = link.hosts[1]
        out = link.run(1, ["ip", "-4", "-o", "addr", "show", "dev", h.ifname], capture_output=True,
                       text=True, check=True).stdout
        assert f"{h.address}/" in out
        env = link.run(1, ["sh", "-c", "echo $GLOO_SOCKET_IFNAME"], capture_output=True, text=True)
        assert env.stdout.strip() == h.ifname


@pytest.mark.netns
def test_tbf_shapes_the_link(need_links):
    with EmulatedLink("20mbit", name_prefix=PREFIX) as link:
        shaped = link.measure_bps(0, 1, 2_500_000)
    with EmulatedLink("unshaped", name_prefix=PREFIX) as link:
        unshaped = link.measure_bps(0, 1, 25_000_000)
    assert 0.5 * 20e6 < shaped < 1.5 * 20e6, shaped
    assert unshaped > 10 * shaped, (shaped, unshaped)


WORKER = textwrap.dedent("""
    import torch, torch.distributed as dist
    dist.init_process_group("gloo")
    r, w = dist.get_rank(), dist.get_world_size()
    x = torch.arange(2 * w, dtype=torch.float32) + 100 * r
    y = torch.empty_like(x)
    dist.all_to_all_single(y, x)
    want = torch.cat([torch.arange(2 * r, 2 * r + 2, dtype=torch.float32) + 100 * s for s in range(w)])
    assert torch.equal(y, want), (y, want)
    t = torch.full((3,), float(r + 1))
    dist.all_reduce(t)
    assert torch.equal(t, torch.full((3,), w * (w + 1) / 2)), t
    print(f"OK {r}/{w}", flush=True)
    dist.destroy_process_group()
""")


@pytest.mark.netns
def test_gloo_collectives_across_namespaces(need_links, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    with EmulatedLink("100mbit", name_prefix=PREFIX) as link:
        logs = [tmp_path / f"host{i}.log" for i in range(2)]
        procs = [
            link.popen(i, link.torchrun_argv(i, [script]), stdout=log.open("w"), stderr=subprocess.STDOUT)
            for i, log in enumerate(logs)
        ]
        for proc, log in zip(procs, logs):
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                pytest.fail(f"torchrun timed out:\n{log.read_text()[-3000:]}")
            assert proc.returncode == 0, log.read_text()[-3000:]
        outputs = "".join(log.read_text() for log in logs)
    assert "OK 0/2" in outputs and "OK 1/2" in outputs
