"""Layer-wise ("vertical") pipeline baseline: the way the seeds' systems split a model across devices.

Device 0 runs the first layers, device 1 the next ones, and so on; activations flow forward through
``torch.distributed.pipelining`` (one ``PipelineStage`` per rank, ``ScheduleGPipe`` over micro-batches).
The model is flattened into *units* — ``[stem, block, ..., block (+ its shuffle), head]`` — and the list is
cut into contiguous stages balanced by per-unit cost. Cuts fall on residual-block boundaries only, so every
skip connection stays inside one stage (longer ones have been reported to hang, pytorch/PiPPy#969).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, ScheduleGPipe
from torch.utils.flop_counter import FlopCounterMode

from decnn.inference.metrics import synced_time

__all__ = [
    "UnitProfile",
    "balanced_cuts",
    "build_stage_module",
    "model_units",
    "profile_units",
    "run_pipeline",
    "split_points",
]

BALANCE = ("flops", "time")
_RESULT_TAG = 7  # the logits' trip from the last stage back to rank 0, apart from the pipeline's own P2P


class _Head(nn.Module):
    """Global average pooling and the classifier (dropout is a no-op in eval mode)."""

    def __init__(self, global_pool: nn.Module, fc: nn.Module):
        super().__init__()
        self.global_pool, self.fc = global_pool, fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.global_pool(x).flatten(1))


def model_units(model: nn.Module) -> OrderedDict[str, nn.Module]:
    """The model as a chain of units: stem, every residual block (a shuffle joins the block before it), head.

    Units share their layers with ``model``; applying them in order computes ``model(x)`` in eval mode.
    """
    units = OrderedDict(stem=model.stem)
    for s, segment in enumerate(model.segments):
        for b, block in enumerate(segment):
            name, unit = f"segments.{s}.{b}", block
            if b == len(segment) - 1 and s < len(model.shuffles):
                name, unit = f"{name}+shuffles.{s}", nn.Sequential(block, model.shuffles[s])
            units[name] = unit
    units["head"] = _Head(model.global_pool, model.fc)
    return units


@dataclass(frozen=True)
class UnitProfile:
    """One unit on a sample input: its cost (FLOPs or seconds, per image) and its output per image."""

    name: str
    cost: float
    out_shape: tuple[int, ...]
    out_bytes: int


@torch.no_grad()
def profile_units(
    model: nn.Module, sample_input: torch.Tensor, balance: str = "flops", repeats: int = 5
) -> list[UnitProfile]:
    """Cost and output size of every unit, running the units in order on ``sample_input`` ([B, C, H, W]).

    ``balance="flops"`` counts FLOPs: deterministic, so every rank gets the same answer, but blind to per-op
    overhead and memory traffic (on one CPU thread, the 64x64 blocks of a tiny-stem DeCNN ResNet-34 take
    ~60% of the time for ~50% of the FLOPs). ``"time"`` takes each unit's fastest of ``repeats`` timed passes
    (after the pass that counts FLOPs, which warms up; the fastest, as other load only adds time): what a
    pipeline sees at this input size, but it differs between runs, so measure it on one rank and share it.
    """
    if balance not in BALANCE:
        raise ValueError(f"unknown balance {balance!r}; choose one of {BALANCE}")
    model.eval()
    units = model_units(model)
    inputs, flops = [sample_input], []
    for unit in units.values():
        counter = FlopCounterMode(display=False)
        with counter:
            inputs.append(unit(inputs[-1]))
        flops.append(counter.get_total_flops())
    costs = flops
    if balance == "time":
        # Whole passes rather than one unit at a time, so slow drifts of the machine hit every unit alike.
        runs = [[] for _ in units]
        for _ in range(repeats):
            for unit, x, times in zip(units.values(), inputs, runs):
                start = synced_time(x.device)
                unit(x)
                times.append(synced_time(x.device) - start)
        costs = [min(times) for times in runs]
    batch = sample_input.shape[0]
    return [
        UnitProfile(name, cost / batch, tuple(y.shape[1:]), y[0].numel() * y.element_size())
        for name, cost, y in zip(units, costs, inputs[1:])
    ]


def balanced_cuts(profiles: list[UnitProfile], num_stages: int) -> list[int]:
    """Where stages 1..N-1 begin: the contiguous split whose costliest stage is cheapest and, among equally
    costly ones, sends the fewest bytes across its cuts (exhaustive search)."""
    n = len(profiles)
    if not 1 <= num_stages <= n:
        raise ValueError(f"num_stages={num_stages}: must lie in 1..{n} (the model has {n} units)")
    prefix = list(itertools.accumulate((p.cost for p in profiles), initial=0.0))

    def key(cuts: tuple[int, ...]) -> tuple[float, int]:
        bounds = (0, *cuts, n)
        slowest = max(prefix[b] - prefix[a] for a, b in itertools.pairwise(bounds))
        return slowest, sum(profiles[c - 1].out_bytes for c in cuts)

    # At most C(units - 1, stages - 1) candidates: ~1,000 for ResNet-50 on 4 stages.
    return list(min(itertools.combinations(range(1, n), num_stages - 1), key=key))


def split_points(model: nn.Module, num_stages: int, sample_input: torch.Tensor, *, balance: str = "flops") -> list[int]:
    """Unit indices where stages 1..N-1 begin (stage s runs units ``bounds[s]:bounds[s + 1]`` of
    ``[0, *cuts, len(units)]``), chosen so the costliest stage is as cheap as possible."""
    return balanced_cuts(profile_units(model, sample_input, balance), num_stages)


def _stage_module(model: nn.Module, cuts: list[int], stage_index: int) -> nn.Sequential:
    units = list(model_units(model).items())
    bounds = [0, *cuts, len(units)]
    if not 0 <= stage_index < len(bounds) - 1:
        raise ValueError(f"stage_index={stage_index}: must lie in 0..{len(bounds) - 2}")
    # nn.Sequential names may not contain dots.
    chosen = units[bounds[stage_index] : bounds[stage_index + 1]]
    return nn.Sequential(OrderedDict((name.replace(".", "_"), unit) for name, unit in chosen)).eval()


def build_stage_module(
    model: nn.Module, num_stages: int, stage_index: int, sample_input: torch.Tensor, *, balance: str = "flops"
) -> nn.Sequential:
    """Stage ``stage_index`` of ``num_stages`` as its own module, holding only its units' layers.

    The layers are shared with ``model``, not copied: drop the model to free the other stages' weights.
    """
    return _stage_module(model, split_points(model, num_stages, sample_input, balance=balance), stage_index)


def _tensor_bytes(module: nn.Module, tensors: str) -> int:
    return sum(t.numel() * t.element_size() for t in getattr(module, tensors)())


def _plan(model, images, num_stages, microbatches, balance) -> dict:
    """Rank 0's view of the run: checked input shape, split points and unit profiles, shared with all ranks."""
    if microbatches < 1:
        raise ValueError(f"microbatches={microbatches}: must be >= 1")
    if not images:
        raise ValueError("images is empty: pass a list of [B, 3, H, W] batches")
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4:
        raise ValueError(f"every batch must have the same [B, C, H, W] shape (drop the last one), got {shapes}")
    shape = next(iter(shapes))
    if shape[0] % microbatches:
        raise ValueError(f"batch size {shape[0]} is not divisible by microbatches={microbatches}")
    sample = torch.zeros((shape[0] // microbatches, *shape[1:]), dtype=images[0].dtype, device=images[0].device)
    profiles = profile_units(model, sample, balance)
    return {
        "num_batches": len(images),
        "batch_shape": shape,
        "dtype": images[0].dtype,
        "microbatches": microbatches,
        "balance": balance,
        "cuts": balanced_cuts(profiles, num_stages),
        "profiles": profiles,
    }


def run_pipeline(
    model: nn.Module,
    images: list[torch.Tensor],
    *,
    microbatches: int,
    group: dist.ProcessGroup | None = None,
    balance: str = "time",
    warmup: int = 1,
) -> tuple[torch.Tensor | None, dict]:
    """Run ``images`` through the model split layer-wise over the ranks of ``group`` (rank r = stage r).

    Call on every rank after the process group is initialised, each rank holding the same ``model``.
    ``images`` is a list of equally shaped [B, C, H, W] batches and only the group's rank 0 reads it: other
    ranks may pass the same list or ``[]``. Rank 0 checks the input, picks the split points on one
    micro-batch and shares both, so errors are raised on every rank. ``balance="time"`` (default) balances
    measured unit times, which is what the stages really take; ``"flops"`` is reproducible but blind to
    memory traffic (see ``profile_units``). Each batch is split into ``microbatches`` and pipelined
    (GPipe); the last stage sends the logits back to rank 0 before the next batch starts, so a batch's
    latency on rank 0 is end to end. ``warmup`` untimed passes of the first batch come first (the first
    pass also sets the stages up).

    Returns rank 0's concatenated logits (None on other ranks) and this rank's stats: ``latency_s`` (per
    batch), ``compute_s`` (per batch, this stage's forward) and ``wait_s`` (the rest: communication and
    pipeline bubbles), ``cut_bytes_per_image`` (activation bytes at each cut), ``result_bytes_per_image``
    (logits sent back to rank 0), ``sent_bytes`` (all this rank sent in the timed batches), ``param_bytes``
    and ``buffer_bytes`` of this stage, ``cuts``, ``balance``, ``stage_units`` (unit names per stage),
    ``stage_costs`` (per image, in FLOPs or seconds), and ``rank``, ``num_stages``, ``microbatches``,
    ``images`` (count).
    """
    rank, num_stages = dist.get_rank(group), dist.get_world_size(group)
    model.eval()
    # Rank 0 decides; its error (a bad input) is raised on every rank instead of leaving the peers waiting.
    shared: list = [None]
    if rank == 0:
        try:
            shared[0] = _plan(model, images, num_stages, microbatches, balance)
        except Exception as err:
            shared[0] = err
    dist.broadcast_object_list(shared, group=group, group_src=0)
    if isinstance(shared[0], Exception):
        raise shared[0]
    plan = shared[0]
    if plan["microbatches"] != microbatches:
        raise ValueError(f"microbatches={microbatches} on rank {rank}, but {plan['microbatches']} on rank 0")

    cuts, profiles = plan["cuts"], plan["profiles"]
    bounds = [0, *cuts, len(profiles)]
    first, last = bounds[rank], bounds[rank + 1]
    module = _stage_module(model, cuts, rank)
    device = next(model.parameters()).device
    micro = plan["batch_shape"][0] // microbatches
    in_shape = plan["batch_shape"][1:] if rank == 0 else profiles[first - 1].out_shape
    # Static shapes: the stages skip the metadata round trip of shape inference.
    stage = PipelineStage(
        module,
        rank,
        num_stages,
        device,
        input_args=torch.empty((micro, *in_shape), dtype=plan["dtype"], device=device),
        output_args=torch.empty((micro, *profiles[last - 1].out_shape), dtype=plan["dtype"], device=device),
        group=group,
    )
    schedule = ScheduleGPipe(stage, n_microbatches=microbatches)

    compute = [0.0]
    module.register_forward_pre_hook(lambda *_: compute.__setitem__(0, compute[0] - synced_time(device)))
    module.register_forward_hook(lambda *_: compute.__setitem__(0, compute[0] + synced_time(device)))

    is_last = rank == num_stages - 1
    logits_shape = (plan["batch_shape"][0], *profiles[-1].out_shape)
    outputs, latency, compute_s = [], [], []
    with torch.inference_mode():
        for i in range(warmup + plan["num_batches"]):
            compute[0] = 0.0
            start = synced_time(device)
            out = schedule.step(images[max(i - warmup, 0)]) if rank == 0 else schedule.step()
            if num_stages > 1 and is_last:
                dist.send(out.contiguous(), group=group, group_dst=0, tag=_RESULT_TAG)
            elif num_stages > 1 and rank == 0:
                out = torch.empty(logits_shape, dtype=plan["dtype"], device=device)
                dist.recv(out, group=group, group_src=num_stages - 1, tag=_RESULT_TAG)
            if i >= warmup:
                latency.append(synced_time(device) - start)
                compute_s.append(compute[0])
                if rank == 0:
                    outputs.append(out)

    images_done = plan["num_batches"] * plan["batch_shape"][0]
    cut_bytes = [profiles[c - 1].out_bytes for c in cuts]
    sent_per_image = profiles[last - 1].out_bytes if num_stages > 1 else 0  # activations, or the logits
    names = [p.name for p in profiles]
    stats = {
        "rank": rank,
        "num_stages": num_stages,
        "microbatches": microbatches,
        "images": images_done,
        "latency_s": latency,
        "compute_s": compute_s,
        "wait_s": [t - c for t, c in zip(latency, compute_s)],
        "cut_bytes_per_image": cut_bytes,
        "result_bytes_per_image": profiles[-1].out_bytes,
        "sent_bytes": sent_per_image * images_done,
        "param_bytes": _tensor_bytes(module, "parameters"),
        "buffer_bytes": _tensor_bytes(module, "buffers"),
        "cuts": cuts,
        "balance": plan["balance"],
        "stage_units": [names[a:b] for a, b in itertools.pairwise(bounds)],
        "stage_costs": [sum(p.cost for p in profiles[a:b]) for a, b in itertools.pairwise(bounds)],
    }
    return (torch.cat(outputs) if rank == 0 else None), stats
