"""decnn.distributed on CPU/gloo: uneven all-to-all, async handles, counted collectives, timeouts that name the peer."""

import os
import time

import pytest
import torch
import torch.distributed as dist

from decnn.distributed.communicator import Communicator, backend_for
from decnn.distributed.launcher import LaunchError, launch
from decnn.distributed.pinning import configure_threads
from decnn.distributed.process import under_launcher


def _collectives_worker() -> dict:
    comm = Communicator(timeout_s=30)
    r, n = comm.rank, comm.world_size
    # Rank r sends r + 1 rows to every rank; their values say who sent them to whom.
    send = torch.cat([torch.full((r + 1, 2), 100.0 * r + d) for d in range(n)])
    out = torch.empty(sum(s + 1 for s in range(n)), 2)
    comm.all_to_all(out, send, [s + 1 for s in range(n)], [r + 1] * n)
    out_async = torch.empty_like(out)
    pending = comm.all_to_all(out_async, send, [s + 1 for s in range(n)], [r + 1] * n, async_op=True)
    x = torch.full((3,), float(r))
    comm.reduce(x, 0)
    b = torch.arange(4.0) if r == 0 else torch.zeros(4)
    comm.broadcast(b, 0)
    pending.wait()
    result = {"out": out, "out_async": out_async, "reduced": x, "broadcast": b, "counts": dict(comm.counts)}
    comm.close()
    return result


def test_all_to_all_with_uneven_splits_sync_and_async_on_three_ranks():
    results = launch(_collectives_worker, (), 3)
    n = 3
    for r, res in results.items():
        # From source s, rank r receives s + 1 rows holding 100 s + r, in source order.
        expected = torch.cat([torch.full((s + 1, 2), 100.0 * s + r) for s in range(n)])
        assert torch.equal(res["out"], expected)
        assert torch.equal(res["out_async"], expected)
        assert torch.equal(res["broadcast"], torch.arange(4.0))
        assert res["counts"] == {"all_to_all": 2, "reduce": 1, "broadcast": 1}
    assert torch.equal(results[0]["reduced"], torch.full((3,), 0.0 + 1 + 2))


def _hang_worker(timeout_s: float) -> None:
    comm = Communicator(timeout_s=timeout_s)
    x, out = torch.ones(2, 2), torch.empty(2, 2)
    comm.all_to_all(out, x, [1, 1], [1, 1])  # everyone takes part once
    if comm.rank == 1:
        time.sleep(120)  # then rank 1 hangs
    comm.all_to_all(out, x, [1, 1], [1, 1])


def test_a_hung_peer_stops_the_collective_within_the_timeout_naming_the_rank():
    start = time.monotonic()
    with pytest.raises(LaunchError, match=r"rank 1 \(host .+\) did not respond") as info:
        launch(_hang_worker, (3.0,), 2)
    # start-up (a few s) + the 3 s gloo timeout + up to 0.75 s spent naming the peer; far below the 120 s hang
    assert time.monotonic() - start < 40
    assert "rank 0 failed: PeerError" in str(info.value)


def test_group_of_one_in_process():
    assert not under_launcher()
    comm = Communicator(timeout_s=10)
    try:
        assert (comm.rank, comm.world_size) == (0, 1)
        assert dist.get_backend() == "gloo"
        x, out = torch.arange(6.0).view(3, 2), torch.empty(3, 2)
        comm.all_to_all(out, x, [3], [3])
        assert torch.equal(out, x)
    finally:
        comm.close()
    assert not dist.is_initialized()


def test_backend_follows_the_device():
    assert backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(torch.device("cuda", 0)) == "nccl"


def test_threads_are_shared_among_local_processes():
    threads = torch.get_num_threads()
    cores = sorted(os.sched_getaffinity(0))
    try:
        configure_threads(local_rank=0, local_world_size=len(cores), threads=None, pin=False)
        assert torch.get_num_threads() == 1
        configure_threads(local_rank=0, local_world_size=1, threads=3, pin=False)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
