"""Layer-wise ("vertical") pipeline baseline: the way the seeds' systems split a model across devices.

Device 0 runs the first layers, device 1 the next ones, and so on. The model is flattened into *units* —
``[stem, block, ..., block (+ its shuffle), head]`` — and the list is cut into contiguous stages balanced by
the units' measured times. Cuts fall on residual-block boundaries only, so every skip connection stays
inside one stage. Each batch is split into micro-batches that flow through the stages (GPipe's forward):
while stage 1 computes micro-batch m, stage 0 computes m+1. Activations travel point to point through the
run's :class:`~decnn.distributed.communicator.Communicator` (timeouts, a named dead peer, counted
messages), channels-last as they come out of the prepared model; the last stage sends the logits back to rank 0.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from decnn.common.timing import Clock
from decnn.distributed.communicator import Communicator
from decnn.inference.inputs import Normalize
from decnn.inference.metrics import synced_time
from decnn.models import DecoupledModelError, DecoupledNet

__all__ = ["PipelineMode", "UnitProfile", "balanced_cuts", "model_units", "profile_units", "stage_module"]


def model_units(model: nn.Module) -> OrderedDict[str, nn.Module]:
    """The model as a chain of units: stem, every child of its segments (a ResNet's residual blocks, a VGG's
    layers; a shuffle joins the unit before it), head. The model is read through the decoupled contract.

    Units share their layers with ``model``; applying them in order computes ``model(x)`` in eval mode.
    ``model`` may be prepared for inference already (its layers fused): only the contract's chain is read
    here, and ``verify_decoupled`` checked the whole contract when the run resolved the model.
    """
    if not isinstance(model, DecoupledNet):
        raise DecoupledModelError(f"{type(model).__name__} is not a decoupled model: the pipeline cutter reads "
                                  "its stem, segments, shuffles and head_parts (decnn.models.DecoupledNet)")
    units = OrderedDict(stem=model.stem)
    for s, segment in enumerate(model.segments):
        for b, block in enumerate(segment):
            name, unit = f"segments.{s}.{b}", block
            if b == len(segment) - 1 and s < len(model.shuffles):
                name, unit = f"{name}+shuffles.{s}", nn.Sequential(block, model.shuffles[s])
            units[name] = unit
    head = model.head_parts()
    units["head"] = nn.Sequential(head.pool, head.linear, head.tail)
    return units


@dataclass(frozen=True)
class UnitProfile:
    """One unit on a sample input: its time and output per image."""

    name: str
    seconds: float
    out_shape: tuple[int, ...]
    out_bytes: int


@torch.inference_mode()
def profile_units(model: nn.Module, sample_input: torch.Tensor, repeats: int = 5) -> list[UnitProfile]:
    """Time and output size of every unit, running the units in order on ``sample_input`` ([B, C, H, W]).

    A unit's time is its fastest of ``repeats`` timed passes after one warm-up pass (the fastest, as other
    load only adds time); whole passes rather than one unit at a time, so slow drifts hit every unit alike.
    Times differ between runs: measure on one rank and share the result.
    """
    model.eval()
    units = model_units(model)
    inputs = [sample_input]
    for unit in units.values():
        inputs.append(unit(inputs[-1]))
    runs = [[] for _ in units]
    for _ in range(repeats):
        for unit, x, times in zip(units.values(), inputs, runs):
            start = synced_time(x.device)
            unit(x)
            times.append(synced_time(x.device) - start)
    batch = sample_input.shape[0]
    return [
        UnitProfile(name, min(times) / batch, tuple(y.shape[1:]), y[0].numel() * y.element_size())
        for name, times, y in zip(units, runs, inputs[1:])
    ]


def balanced_cuts(profiles: list[UnitProfile], num_stages: int) -> list[int]:
    """Where stages 1..N-1 begin: the contiguous split whose costliest stage is cheapest and, among equally
    costly ones, sends the fewest bytes across its cuts (exhaustive search)."""
    n = len(profiles)
    if not 1 <= num_stages <= n:
        raise ValueError(f"num_stages={num_stages}: must lie in 1..{n} (the model has {n} units)")
    prefix = list(itertools.accumulate((p.seconds for p in profiles), initial=0.0))

    def key(cuts: tuple[int, ...]) -> tuple[float, int]:
        bounds = (0, *cuts, n)
        slowest = max(prefix[b] - prefix[a] for a, b in itertools.pairwise(bounds))
        return slowest, sum(profiles[c - 1].out_bytes for c in cuts)

    # At most C(units - 1, stages - 1) candidates: ~1,000 for ResNet-50 on 4 stages.
    return list(min(itertools.combinations(range(1, n), num_stages - 1), key=key))


def stage_module(model: nn.Module, cuts: list[int], stage_index: int) -> nn.Sequential:
    """Stage ``stage_index`` of the split at ``cuts`` as its own module, sharing its units' layers with
    ``model`` (drop the model to free the other stages' weights)."""
    units = list(model_units(model).items())
    bounds = [0, *cuts, len(units)]
    if not 0 <= stage_index < len(bounds) - 1:
        raise ValueError(f"stage_index={stage_index}: must lie in 0..{len(bounds) - 2}")
    # nn.Sequential names may not contain dots.
    chosen = units[bounds[stage_index] : bounds[stage_index + 1]]
    return nn.Sequential(OrderedDict((name.replace(".", "_"), unit) for name, unit in chosen)).eval()


def _to_wire(y: torch.Tensor) -> torch.Tensor:
    """A channels-last activation as the contiguous [B, H, W, C] tensor it already is in memory."""
    return y.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)


class PipelineMode:
    """This rank's stage of the layer-wise split (rank r = stage r), one batch per step.

    Rank 0 times the units of the (prepared) ``model`` on one micro-batch of ``sample_shape`` and shares
    the balanced cuts, so every rank builds its stage from the same decision.
    """

    batches_per_step = 1

    def __init__(self, model: nn.Module, comm: Communicator, normalize: Normalize, microbatches: int,
                 sample_shape: tuple[int, ...]):
        if microbatches < 1:
            raise ValueError(f"microbatches={microbatches}: must be >= 1")
        self.comm, self.normalize, self.microbatches = comm, normalize, microbatches
        self.clock = Clock()
        plan = None
        if comm.rank == 0:
            sample = torch.zeros(sample_shape, device=comm.device)
            profiles = profile_units(model, sample)
            plan = (balanced_cuts(profiles, comm.world_size), profiles)
        self.cuts, self.profiles = comm.broadcast_object(plan)
        bounds = [0, *self.cuts, len(self.profiles)]
        self.first, self.last = bounds[comm.rank], bounds[comm.rank + 1]
        self.module = stage_module(model, self.cuts, comm.rank)
        self.stage_units = [[p.name for p in self.profiles[a:b]] for a, b in itertools.pairwise(bounds)]
        self.sent_bytes = 0

    @property
    def cut_bytes_per_image(self) -> list[int]:
        return [self.profiles[c - 1].out_bytes for c in self.cuts]

    @torch.inference_mode()
    def step(self, inputs: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """Run each batch through the stages; rank 0 gets the logits, the others None."""
        out = [self._batch(images) for images in inputs]
        return out if self.comm.rank == 0 else None

    def _batch(self, images: torch.Tensor) -> torch.Tensor | None:
        comm, clock, rank, world = self.comm, self.clock, self.comm.rank, self.comm.world_size
        # Every rank derives the same micro-batch sizes from the batch's shape (a ragged last batch too).
        sizes = [n for n in (len(part) for part in images.tensor_split(self.microbatches)) if n]
        device = comm.device
        if rank == 0:
            with clock.part("normalize"):
                xs = self.normalize(images).split(sizes)
        else:  # receive every micro-batch as early as possible
            c, h, w = self.profiles[self.first - 1].out_shape
            buffers = [torch.empty(n, h, w, c, device=device) for n in sizes]
            recvs = [clock.issue(f"activations {rank - 1}->{rank}",
                                 lambda b=b: comm.recv(b, rank - 1, async_op=True)) for b in buffers]
        is_last = rank == world - 1
        sends, outs = [], []
        for m in range(len(sizes)):
            if rank == 0:
                x = xs[m]
            else:
                recvs[m].wait()
                x = buffers[m].permute(0, 3, 1, 2)
            with clock.part("segment 0"):
                y = self.module(x)
            if is_last:
                outs.append(y)
                continue
            with clock.part("pack"):
                wire = _to_wire(y)
            sends.append(clock.issue(f"activations {rank}->{rank + 1}",
                                     lambda wire=wire: comm.send(wire, rank + 1, async_op=True)))
            self.sent_bytes += wire.numel() * wire.element_size()
        for s in sends:
            s.wait()
        if world == 1:
            return torch.cat(outs)
        key = f"logits {world - 1}->0"
        if is_last:
            logits = torch.cat(outs)
            clock.issue(key, lambda: comm.send(logits, 0, async_op=True)).wait()
            self.sent_bytes += logits.numel() * logits.element_size()
            return None
        if rank == 0:
            logits = torch.empty(len(images), *self.profiles[-1].out_shape, device=device)
            clock.issue(key, lambda: comm.recv(logits, world - 1, async_op=True)).wait()
            return logits
        return None

    def reset_stats(self) -> None:
        self.clock.reset()
        self.sent_bytes = 0

    def rank_stats(self) -> dict:
        return {"sent_bytes": self.sent_bytes, "cut_bytes_per_image": self.cut_bytes_per_image,
                "pipeline_stages": self.stage_units}
