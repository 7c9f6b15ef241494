"""The planner: from a profile, predict every way to run the model on these devices and rank them.

Candidates:

- ``single``: the whole model on device 0 (the device that holds the inputs).
- ``data``: whole copies, one batch per device per step.
- ``pipeline``: the layer-wise split, cut where the run cuts it (balanced on rank 0's measured unit times),
  with 1 or 2 micro-batches.
- ``branch``: every placement of consecutive groups on the devices (even and uneven; G=8 models give finer
  steps), every exchange dtype whose logits agree with fp32's on top-1 for at least ``AGREEMENT_BOUND`` of
  the profile's images, and 1..``MAX_IN_FLIGHT`` batches in flight.

Objective ``latency`` ranks by the step time (what the run reports as each batch's latency); ``throughput``
by the time per batch (step / batches per step).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from decnn.common.costmodel import Prediction, data_parallel, pipeline, simulate_branch, transfer_seconds
from decnn.inference.pipeline_mode import UnitProfile, balanced_cuts
from decnn.partition import Placement, exchange_plans
from decnn.plan.profile import Profile
from decnn.wire.exchange import EXCHANGE_DTYPES, WIRE_DTYPES, row_elements

OBJECTIVES = ("latency", "throughput")
MODES = ("branch", "pipeline", "data", "single")
AGREEMENT_BOUND = 0.99  # fraction of images whose top-1 class must equal fp32's
MAX_IN_FLIGHT = 4


@dataclass(frozen=True)
class Plan:
    """One way to run, with the cost model's prediction for it."""

    mode: str
    devices: int
    prediction: Prediction
    placement: Placement | None = None
    exchange_dtype: str = "fp32"
    overlap: int = 1  # batches in flight (branch) or micro-batches (pipeline)
    cuts: tuple[int, ...] = ()  # pipeline: unit indices where stages 1.. begin

    def cost(self, objective: str) -> float:
        return self.prediction.step_s if objective == "latency" else self.prediction.per_batch_s

    def infer_args(self) -> list[str]:
        """The settings of ``infer_distributed.py`` that run this plan."""
        args = ["--mode", self.mode]
        if self.mode == "branch":
            args += ["--placement", "/".join(",".join(map(str, d)) for d in self.placement.devices),
                     "--exchange-dtype", self.exchange_dtype]
        if self.overlap > 1:
            args += ["--overlap", str(self.overlap)]
        return args

    def describe(self) -> str:
        if self.mode == "branch":
            groups = "/".join(",".join(map(str, d)) for d in self.placement.devices)
            return f"branch {groups} {self.exchange_dtype} overlap {self.overlap}"
        if self.mode == "pipeline":
            return f"pipeline cuts {list(self.cuts)} micro-batches {self.overlap}"
        return f"{self.mode} x{self.devices}" if self.mode == "data" else "single (device 0)"


def eligible_dtypes(profile: Profile, bound: float = AGREEMENT_BOUND) -> list[str]:
    """Exchange dtypes whose measured top-1 agreement with fp32 is at least ``bound``."""
    return [d for d in EXCHANGE_DTYPES if profile.agreement[d]["top1_agreement"] >= bound]


def placements(groups: int, devices: int) -> list[Placement]:
    """Every placement of consecutive groups with at least one group per device."""
    out = []
    for bounds in itertools.combinations(range(1, groups), devices - 1):
        edges = (0, *bounds, groups)
        out.append(Placement(groups, tuple(tuple(range(a, b)) for a, b in itertools.pairwise(edges))))
    return out


def _link(profile: Profile, src: int, dst: int, nbytes: float) -> float:
    links = profile.links
    return links.latency_s[src][dst] + nbytes / links.bytes_per_s[src][dst]


def _message_s(profile: Profile) -> float:
    return profile.links.collective_s.get("all_to_all", 0.0)


def predict_branch(profile: Profile, placement: Placement, dtype: str, in_flight: int) -> Prediction:
    n, b = placement.num_devices, profile.batch
    wire_bytes = np.dtype(WIRE_DTYPES[dtype]).itemsize
    transfer = []
    for perm, pixels in zip(profile.permutations, profile.pixels):
        plans = exchange_plans(torch.tensor(perm), placement)
        row = b * row_elements(dtype, pixels) * wire_bytes
        sent = [[0 if s == d else plans[s].send_splits[d] * row for d in range(n)] for s in range(n)]
        transfer.append(transfer_seconds(sent, profile.links.bytes_per_s, _message_s(profile)))
    compute = []
    for d, groups in enumerate(placement.devices):
        k, dev = len(groups), profile.devices[d]
        seg = dev.segment_s[k - 1]
        pack = dev.pack_s[dtype][k - 1]
        compute.append([seg[i] + pack[i] for i in range(len(pack))] + [seg[-2] + seg[-1]])
    broadcast = max(_link(profile, 0, j, b * profile.input_bytes) for j in range(1, n))
    reduce = max(_link(profile, j, 0, b * profile.logits_bytes) for j in range(1, n))
    return simulate_branch(compute, transfer, in_flight, broadcast, reduce)


def predict_single(profile: Profile) -> Prediction:
    whole = sum(profile.devices[0].segment_s[profile.groups - 1])
    return Prediction(whole, whole, whole, 0.0)


def predict_data(profile: Profile) -> Prediction:
    n, b = profile.num_devices, profile.batch
    compute = [sum(dev.segment_s[profile.groups - 1]) for dev in profile.devices]
    scatter = sum(_link(profile, 0, j, b * profile.input_bytes) for j in range(1, n))
    gather = sum(_link(profile, j, 0, b * profile.logits_bytes) for j in range(1, n))
    return data_parallel(compute, scatter, gather)


def run_cuts(profile: Profile) -> tuple[int, ...]:
    """The cuts mode pipeline will choose: balanced on rank 0's unit times."""
    units = [UnitProfile(name, t, (), nbytes) for name, t, nbytes in
             zip(profile.unit_names, profile.devices[0].unit_s, profile.unit_out_bytes)]
    return tuple(balanced_cuts(units, profile.num_devices))


def predict_pipeline(profile: Profile, cuts: tuple[int, ...], microbatches: int) -> Prediction:
    n, b = profile.num_devices, profile.batch
    bounds = (0, *cuts, len(profile.unit_names))
    stage = [sum(profile.devices[s].unit_s[lo:hi]) / microbatches for s, (lo, hi) in
             enumerate(itertools.pairwise(bounds))]
    cut = [_link(profile, s, s + 1, b / microbatches * profile.unit_out_bytes[c - 1]) for s, c in enumerate(cuts)]
    return pipeline(stage, cut, microbatches, _link(profile, n - 1, 0, b * profile.logits_bytes))


def candidates(profile: Profile, modes: tuple[str, ...] = MODES, max_in_flight: int = MAX_IN_FLIGHT) -> list[Plan]:
    """Every plan of ``modes`` that these devices can run, each with its prediction."""
    n = profile.num_devices
    out = []
    if "single" in modes:
        out.append(Plan("single", 1, predict_single(profile)))
    if n < 2:
        return out
    if "data" in modes:
        out.append(Plan("data", n, predict_data(profile)))
    if "pipeline" in modes and n <= len(profile.unit_names):
        cuts = run_cuts(profile)
        for m in (1, 2):
            if profile.batch % m == 0:
                out.append(Plan("pipeline", n, predict_pipeline(profile, cuts, m), overlap=m, cuts=cuts))
    if "branch" in modes and n <= profile.groups:
        for placement in placements(profile.groups, n):
            for dtype in eligible_dtypes(profile):
                for k in range(1, max_in_flight + 1):
                    out.append(Plan("branch", n, predict_branch(profile, placement, dtype, k), placement, dtype, k))
    return out


def plan(profile: Profile, objective: str = "latency", modes: tuple[str, ...] = MODES) -> list[Plan]:
    """Every candidate, best first, for ``objective`` ("latency" or "throughput")."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}, e.g. 'latency'")
    ranked = sorted(candidates(profile, modes), key=lambda p: p.cost(objective))
    if not ranked:
        raise ValueError(f"no plan of modes {modes} fits {profile.num_devices} devices and {profile.groups} groups")
    return ranked


def format_plans(plans: list[Plan], objective: str) -> str:
    """A table of plans with their predicted step time and throughput."""
    lines = [f"{'#':>2}  {'plan':<40} {'step ms':>9} {'ms/batch':>9}   objective: {objective}"]
    for i, p in enumerate(plans, 1):
        lines.append(f"{i:>2}  {p.describe():<40} {p.prediction.step_s * 1e3:>9.2f} "
                     f"{p.prediction.per_batch_s * 1e3:>9.2f}")
    return "\n".join(lines)
