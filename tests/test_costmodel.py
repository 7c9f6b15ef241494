"""The split-inference cost model: its arithmetic and the byte counts it takes from the branches."""

import pytest
import timm
import torch

from decnn.bench.costmodel import predict, sent_bytes, time_segments
from decnn.partition import Placement, extract_branches


def test_prediction_adds_slowest_device_per_segment_and_transfers():
    seconds = [[0.010, 0.020], [0.015, 0.005]]  # two devices, two segments
    sent = [[1_000_000], [500_000]]  # bytes at the one shuffle point
    p = predict(seconds, sent, rate_bps=8e6, per_message_s=0.001)
    assert p.compute_s == pytest.approx(0.015 + 0.020)
    assert p.transfer_s == pytest.approx(1.0 + 0.001)  # the busier link sets the pace
    assert p.latency_s == pytest.approx(p.compute_s + p.transfer_s)
    assert p.overlapped_s == pytest.approx(max(0.030, 1.001))


def test_unlimited_link_costs_only_the_per_message_overhead():
    p = predict([[0.01, 0.01]], [[10**9]], rate_bps=None, per_message_s=0.002)
    assert p.transfer_s == pytest.approx(0.002)


def test_bytes_follow_the_exchange_plans():
    model = timm.create_model("decnn_resnet18", width=0.5, num_classes=10).eval()
    branches = extract_branches(model, Placement.even(4, 2))
    x = torch.randn(2, 3, 32, 32)
    sent = sent_bytes(branches, x, element_size=2)
    # Stage widths 32/64/128 at 32/16/8 px; each device holds half and sends half of that: a quarter.
    expected = [c // 4 * 2 * s * s * 2 for c, s in ((32, 32), (64, 16), (128, 8))]
    assert sent == [expected, expected]


def test_segment_timing_has_one_entry_per_device_and_segment():
    model = timm.create_model("decnn_resnet18", width=0.25, num_classes=10).eval()
    branches = extract_branches(model, Placement(4, ((0, 1, 2), (3,))))
    seconds = time_segments(branches, torch.randn(1, 3, 32, 32), repeats=3)
    assert len(seconds) == 2 and all(len(dev) == 4 for dev in seconds)
    assert all(t > 0 for dev in seconds for t in dev)
