"""Emulated boards: waits that leave the CPU alone, devices in CPU quotas of their own, and the validation."""

import os
import subprocess
import threading
import time

import pytest

from decnn.bench.boards import Boards, BoardsError
from decnn.bench.validate_boards import format_markdown, main, validate
from decnn.common.timing import WAIT_CPU, Clock
from decnn.edge.transport import Request
from decnn.emulation.faults import FAULT_ENV, SLOW_S
from decnn.emulation.netns import links_available, netns_names
from decnn.emulation.quota import PREFIX, CpuQuota, quotas_available

RUN = ["--images", "4", "--warmup", "1"]


@pytest.fixture
def need_quotas():
    ok, reason = quotas_available()
    if not ok:
        pytest.skip(reason)
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two boards of a whole core need 2 cores")


@pytest.fixture
def shards(onnx_export):
    """The shared tiny export (DeCNN ResNet-18 G4 x0.5, 32x32) for 2 devices; its model.onnx is the whole model."""
    return onnx_export[1] / "shards"


def wait_cpu_share(breakdown: dict) -> float:
    return breakdown["wait_cpu_ms"] / (breakdown["peer_wait_ms"] + breakdown["wire_ms"])


class _Later:
    """An MPI request that completes ``after`` seconds from now (what Request.wait tests)."""

    def __init__(self, after: float):
        self.done_at = time.monotonic() + after

    def Test(self) -> bool:
        return time.monotonic() >= self.done_at


class _Comm:
    timeout = 10.0


def test_a_device_runtime_wait_sleeps_instead_of_spinning():
    cpu, start = time.process_time(), time.monotonic()
    Request(_Comm(), _Later(0.3), "all_to_all").wait()
    waited = time.monotonic() - start
    assert waited >= 0.3
    assert time.process_time() - cpu < 0.05 * waited  # a spinning wait spends all of it


def test_the_clock_counts_the_cpu_a_wait_spends():
    class Blocking:
        def wait(self):
            threading.Event().wait(0.05)

    class Spinning:
        def wait(self):
            start = time.process_time()
            while time.process_time() - start < 0.05:
                pass

    clock = Clock()
    clock.issue("blocking", Blocking).wait()
    blocking = clock.seconds[WAIT_CPU]
    clock.issue("spinning", Spinning).wait()
    assert blocking < 0.01
    assert clock.seconds[WAIT_CPU] - blocking >= 0.05


def test_boards_refuse_more_cpu_than_the_machine_has():
    cores = len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match=f"this machine has {cores}"):
        Boards(2 * cores + 1, 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        Boards(1, 1.5)
    with pytest.raises(ValueError, match="mbit"):
        Boards(2, 0.5, "fast")


def test_bench_boards_bad_arguments_exit_2_in_one_line(capsys):
    assert main(["--cpu", "1", "0"]) == 2
    assert main(["--rounds", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


@pytest.mark.netns
def test_a_new_quota_removes_those_of_dead_creators_only(need_quotas):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = CpuQuota(0.5, name=f"{PREFIX}-{dead.pid}-0")
    stale.path.mkdir()  # what a creator killed by SIGKILL leaves behind
    try:
        with CpuQuota(0.5) as live, CpuQuota(0.5) as other:
            assert not stale.path.exists() and live.path.exists() and other.path.exists()
    finally:
        if stale.path.exists():
            stale.path.rmdir()
    assert not live.path.exists()


@pytest.mark.netns
def test_a_quotad_device_waiting_for_a_slow_peer_spends_almost_no_cpu(need_quotas, shards, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "1:0:slow")  # rank 1 falls behind before the first timed batch
    with Boards(2, 0.5) as boards:
        record = boards.edge(shards, RUN)
    waiting = record.breakdown_per_rank[0]
    assert (waiting["peer_wait_ms"] + waiting["wire_ms"]) * record.images >= 0.9 * SLOW_S * 1e3
    assert wait_cpu_share(waiting) < 0.05


@pytest.mark.netns
def test_a_split_on_boards_runs_each_device_in_its_quota(need_quotas, shards):
    with Boards(2, 0.5) as boards:
        record = boards.edge(shards, RUN)
        stats = [q.stat() for q in boards.quotas]
        paths = [q.path for q in boards.quotas]
        with pytest.raises(BoardsError, match=r"^python -m decnn.edge.device_run: error: argument --batch"):
            boards.edge(shards, ["--batch", "0"])
    assert (record.devices, record.cpu_fraction, record.link, record.transport) == (2, 0.5, "loopback", "mpi-shm")
    assert all(s["nr_throttled"] > 0 for s in stats)  # each device ran in its own quota, and the quota bit
    assert {"wait_cpu_ms", "peer_wait_ms", "wire_ms"} <= set(record.breakdown_per_rank[1])
    assert not any(p.exists() for p in paths)


@pytest.mark.netns
def test_boards_over_an_emulated_link_cross_tcp_and_leave_nothing(need_quotas, shards):
    ok, reason = links_available()
    if not ok:
        pytest.skip(reason)
    with Boards(2, 0.5, "1gbit") as boards:
        record = boards.edge(shards, RUN)
        names = {h.netns for h in boards.net.hosts}
        stats = [q.stat() for q in boards.quotas]
    assert (record.cpu_fraction, record.link, record.transport) == (0.5, "1gbit", "mpi-tcp")
    assert all(s["nr_throttled"] > 0 for s in stats)
    assert not names & set(netns_names())


@pytest.mark.netns
def test_validation_at_tiny_size(need_quotas, shards):
    result = validate(shards, shards, (1.0, 0.5), rounds=1, images=4, warmup=1)
    full, half = result["fractions"]
    assert (full["cpu"], half["cpu"]) == (1.0, 0.5)
    for row in (full, half):
        assert row["speedup"] == [row["single_p50_ms"][0] / row["split_p50_ms"][0]]
        assert [sorted(b) for b in row["breakdown_per_rank"]] == [sorted(row["breakdown_per_rank"][0])] * 2
    assert result["ratio"] == pytest.approx(half["speedup_median"] / full["speedup_median"])
    assert result["within_tolerance"] == (abs(result["ratio"] - 1) <= 0.10)
    text = format_markdown(result, "decnn bench boards --rounds 1")
    assert f"ratio {result['ratio']:.3f}" in text and "CPU while waiting" in text


@pytest.mark.slow
@pytest.mark.netns
def test_a_pytorch_device_waiting_for_a_slow_peer_spends_almost_no_cpu(need_quotas, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "1:0:slow")
    with Boards(2, 0.5) as boards:
        record = boards.infer(["--random-init", "--model", "decnn_resnet18", "--width", "0.5", "--image-size", "32",
                               "--num-images", "4", "--warmup", "1", "--mode", "branch"])
    waiting = record.breakdown_per_rank[0]
    assert (record.backend, record.cpu_fraction) == ("torch", 0.5)
    assert (waiting["peer_wait_ms"] + waiting["wire_ms"]) * record.images >= 0.9 * SLOW_S * 1e3
    assert wait_cpu_share(waiting) < 0.05
