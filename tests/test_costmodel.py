"""The split-inference cost model: its formulas on cases computed by hand."""

import pytest

from decnn.common.costmodel import data_parallel, pipeline, simulate_branch, transfer_seconds


def test_transfer_is_the_busiest_endpoint_plus_one_message():
    bw = [[0, 1e6], [2e6, 0]]  # bytes/s: 0->1 at 1 MB/s, 1->0 at 2 MB/s
    sent = [[0, 500_000], [500_000, 0]]
    # device 0 sends 0.5 s, device 1 sends 0.25 s; device 0 receives 0.25 s, device 1 receives 0.5 s
    assert transfer_seconds(sent, bw, message_s=0.001) == pytest.approx(0.501)


def test_transfer_adds_the_links_of_one_sender():
    bw = [[0, 1e6, 1e6], [1e6, 0, 1e6], [1e6, 1e6, 0]]
    sent = [[0, 100_000, 300_000], [0, 0, 0], [0, 0, 0]]
    assert transfer_seconds(sent, bw, 0.0) == pytest.approx(0.4)  # device 0's egress: 0.1 + 0.3 s


def test_one_batch_is_slowest_device_per_segment_plus_every_transfer():
    compute = [[0.010, 0.020], [0.015, 0.005]]  # two devices, two segments (the head in the last)
    p = simulate_branch(compute, transfer=[0.100], in_flight=1, broadcast_s=0.002, reduce_s=0.003)
    assert p.step_s == pytest.approx(0.002 + 0.015 + 0.100 + 0.020 + 0.003)
    assert p.per_batch_s == p.step_s


def test_two_batches_in_flight_hide_a_transfer_behind_the_next_compute():
    compute = [[0.010, 0.010]]  # one device, for the arithmetic
    p = simulate_branch(compute, transfer=[0.005], in_flight=2)
    # b0 s0 ends 10, its transfer 10-15; b1 s0 ends 20, transfer 20-25; b0 s1 20-30; b1 s1 30-40
    assert p.step_s == pytest.approx(0.040)
    assert p.per_batch_s == pytest.approx(0.020)
    slow_link = simulate_branch(compute, transfer=[0.030], in_flight=2)
    # transfers 10-40 and 40-70 (one link); b0 s1 40-50, b1 s1 70-80
    assert slow_link.step_s == pytest.approx(0.080)


def test_data_parallel_and_pipeline():
    d = data_parallel([0.030, 0.050], scatter_s=0.002, gather_s=0.001)
    assert d.step_s == pytest.approx(0.053) and d.per_batch_s == pytest.approx(0.0265)
    p = pipeline([0.010, 0.020], [0.004], microbatches=2, result_s=0.001)
    # first micro-batch 10 + 4 + 20, the second 20 behind it, logits back 1
    assert p.step_s == pytest.approx(0.055)
