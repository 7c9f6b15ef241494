"""A cost model for split inference: measured branch compute plus bytes over a link of known bandwidth.

Latency of one batch without overlap: every segment waits for the slowest device, then every device sends
its share of the shuffle over its own link (the exchange is an all-to-all, so each device's egress carries
what it sends to all the others):

    latency = sum_i max_d compute[d][i] + sum_s max_d sent_bytes[d][s] * 8 / rate + messages * overhead

With overlap (the paper's Scheme 3) compute of one batch hides the exchange of another, so in the steady
state a batch costs the larger of the two: ``max(max_d sum_i compute[d][i], sum_s max_d transfer_s)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from decnn.partition import Branch, local_exchange


@dataclass(frozen=True)
class Prediction:
    compute_s: float
    transfer_s: float
    latency_s: float
    overlapped_s: float


def predict(
    segment_seconds: list[list[float]],
    sent_bytes: list[list[int]],
    rate_bps: float | None,
    per_message_s: float = 0.0,
) -> Prediction:
    """Predict per-batch time from ``segment_seconds[device][segment]`` and ``sent_bytes[device][shuffle]``.

    ``rate_bps`` is the link's bit rate (None: unlimited); ``per_message_s`` a fixed cost per exchange.
    """
    num_segments = len(segment_seconds[0])
    compute = sum(max(dev[i] for dev in segment_seconds) for i in range(num_segments))
    num_shuffles = len(sent_bytes[0]) if sent_bytes else 0
    transfer = sum(
        (max(dev[s] for dev in sent_bytes) * 8 / rate_bps if rate_bps else 0.0) + per_message_s
        for s in range(num_shuffles)
    )
    busiest = max(sum(dev) for dev in segment_seconds)
    return Prediction(compute, transfer, compute + transfer, max(busiest, transfer))


@torch.inference_mode()
def time_segments(branches: list[Branch], x: torch.Tensor, repeats: int = 5) -> list[list[float]]:
    """Median seconds of each branch's segments on input ``x``, run here with the reference exchange."""
    times = [[[] for _ in b.segments] for b in branches]
    for _ in range(repeats):
        outs = [x] * len(branches)
        for i in range(len(branches[0].segments)):
            if i:
                outs = local_exchange([b.plans[i - 1] for b in branches], outs)
            for d, b in enumerate(branches):
                start = time.perf_counter()
                outs[d] = b.segment(i, outs[d])
                times[d][i].append(time.perf_counter() - start)
    return [[sorted(t)[len(t) // 2] for t in dev] for dev in times]


def sent_bytes(branches: list[Branch], x: torch.Tensor, element_size: int) -> list[list[int]]:
    """Bytes each device sends at each shuffle point for input ``x`` (shapes from one reference pass)."""
    with torch.inference_mode():
        outs = [b.segment(0, x) for b in branches]
        sizes = []
        for i in range(branches[0].num_shuffles):
            per_channel = outs[0][:, :1].numel()
            sizes.append([b.plans[i].channels_sent * per_channel * element_size for b in branches])
            outs = local_exchange([b.plans[i] for b in branches], outs)
            outs = [b.segment(i + 1, o) for b, o in zip(branches, outs)]
    return [[sizes[s][d] for s in range(len(sizes))] for d in range(len(branches))]
