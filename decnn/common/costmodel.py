"""A cost model for split inference, built from measured parts only: segment times, codec and packing
times, per-message latency and each link's real (TCP) throughput, all from a profile taken where the run runs.

Transfers. An all-to-all in which device s sends ``b[s][d]`` bytes to device d ends when the busiest
endpoint has moved its bytes: every device's egress (its sends, one link after another) and ingress (its
receives) each take ``sum b / bandwidth`` over their links, so

    transfer = message + max_d max(sum_j b[d][j] / bw[d][j], sum_j b[j][d] / bw[j][d])

where ``message`` is the measured time of an all-to-all of a few bytes (the per-message latency).

Branch mode. Per batch and device, segment i costs ``compute[d][i]`` (its convolutions, plus packing and
the codec at the shuffle point after it); the all-to-all after segment i starts when every device has
issued it and the link is free. :func:`simulate_branch` plays that schedule for ``in_flight`` batches
advancing segment by segment (the run's overlap), so with one batch it is the sum over segments of the
slowest device plus every transfer, and with several a transfer hides behind the next batch's compute.
The inputs' broadcast starts the step and the partial logits' reduce ends it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prediction:
    """Seconds of one step (what the run reports as each of its batches' latency) and per batch
    (``step_s / batches_per_step``, the inverse of throughput in batches)."""

    step_s: float
    per_batch_s: float
    compute_s: float  # the busiest device's compute per step
    transfer_s: float  # the link time per step


def transfer_seconds(sent: list[list[float]], bandwidth: list[list[float]], message_s: float) -> float:
    """One all-to-all: ``sent[s][d]`` bytes from s to d over links of ``bandwidth[s][d]`` bytes/s."""
    n = len(sent)
    busiest = 0.0
    for d in range(n):
        egress = sum(sent[d][j] / bandwidth[d][j] for j in range(n) if j != d and sent[d][j])
        ingress = sum(sent[j][d] / bandwidth[j][d] for j in range(n) if j != d and sent[j][d])
        busiest = max(busiest, egress, ingress)
    return message_s + busiest


def simulate_branch(compute: list[list[float]], transfer: list[float], in_flight: int = 1,
                    broadcast_s: float = 0.0, reduce_s: float = 0.0) -> Prediction:
    """One step of branch mode: ``compute[d][i]`` seconds per batch for segment i on device d (the head in
    the last segment), ``transfer[i]`` seconds for the all-to-all after segment i, ``in_flight`` batches.

    Batches advance segment by segment in the run's order (all batches through segment i, then i + 1); a
    device computes one batch at a time; a batch's all-to-all starts once every device has computed its
    segment and the previous all-to-all has finished (they share the links); a segment of a batch starts
    once its exchange has arrived. Input broadcasts go out one after another at the start.
    """
    devices, segments = len(compute), len(compute[0])
    ready = [broadcast_s * (m + 1) for m in range(in_flight)]  # when batch m's input for segment i is here
    free = [0.0] * devices
    link_free = 0.0
    for i in range(segments):
        for m in range(in_flight):
            done = 0.0
            for d in range(devices):
                free[d] = max(free[d], ready[m]) + compute[d][i]
                done = max(done, free[d])
            if i < segments - 1:
                link_free = max(done, link_free) + transfer[i]
                ready[m] = link_free
    step = max(free) + reduce_s
    busiest = max(sum(c) for c in compute) * in_flight
    return Prediction(step, step / in_flight, busiest, sum(transfer) * in_flight)


def data_parallel(compute: list[float], scatter_s: float, gather_s: float) -> Prediction:
    """One step of data mode: rank 0 scatters one batch to every device (``scatter_s``), each runs the whole
    model (``compute[d]``), rank 0 gathers the logits (``gather_s``)."""
    step = scatter_s + max(compute) + gather_s
    return Prediction(step, step / len(compute), max(compute), scatter_s + gather_s)


def pipeline(stage_s: list[float], cut_s: list[float], microbatches: int, result_s: float) -> Prediction:
    """One batch through a layer-wise pipeline (GPipe) of ``microbatches`` micro-batches: ``stage_s[s]``
    seconds per micro-batch for stage s, ``cut_s[s]`` to send one micro-batch's activations after stage s
    (all but the last stage), ``result_s`` to send the batch's logits from the last stage back to rank 0.

    The first micro-batch crosses every stage and cut; the others follow at the pace of the slowest of them.
    """
    step = sum(stage_s) + sum(cut_s) + (microbatches - 1) * max(stage_s + cut_s) + result_s
    return Prediction(step, step, max(stage_s) * microbatches, (sum(cut_s) + result_s) * microbatches)


def lockstep(compute: list[list[float]], sent: list[list[list[float]]], latency: list[list[float]],
             bandwidth: list[list[float]], broadcast_s: float = 0.0, reduce_s: float = 0.0,
             burst: list[float] | None = None) -> Prediction:
    """One batch of a split whose devices work in lockstep (a spatial split; DeCNN's branches one batch at a
    time): ``compute[d][s]`` seconds of device d before exchange s (``compute[d][-1]``: after the last one, the
    head), ``sent[s][i][j]`` bytes from i to j at exchange s. Per step the slowest device computes, then the
    exchange takes the slowest pair's message latency plus the busiest endpoint's bytes over its links.

    ``burst[i]``: bytes that device i's link lets through at once when it has been idle (a token bucket, as tc's
    tbf shapes an emulated link: it refills at the link's rate while the devices compute); None: none."""
    n = len(compute)
    step, moved = broadcast_s, 0.0
    bucket = list(burst) if burst else [0.0] * n
    refilled = 0.0  # when the buckets were last brought up to date
    rate = [min((bandwidth[i][j] for j in range(n) if j != i), default=float("inf")) for i in range(n)]
    for s, matrix in enumerate(sent):
        step += max(c[s] for c in compute)
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j and matrix[i][j]]
        if not pairs:
            continue
        if burst:  # what each link saved up while idle passes at once; the rest at the link's rate
            for i in range(n):
                bucket[i] = min(burst[i], bucket[i] + rate[i] * (step - refilled))
            egress = [sum(matrix[i][j] for j in range(n) if j != i) for i in range(n)]
            transfer = max(latency[i][j] for i, j in pairs) + max(
                max(egress[i] - bucket[i], 0.0) / rate[i] for i in range(n))
            bucket = [max(bucket[i] - egress[i], 0.0) for i in range(n)]
            refilled = step + transfer
        else:
            transfer = transfer_seconds(matrix, bandwidth, max(latency[i][j] for i, j in pairs))
        step, moved = step + transfer, moved + transfer
    step += max(c[-1] for c in compute) + reduce_s
    return Prediction(step, step, max(sum(c) for c in compute), moved)
