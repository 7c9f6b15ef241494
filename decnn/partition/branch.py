"""Branches: a decoupled model restricted to one device's channel groups.

A branch holds only its own weights: the stem's output rows for its channels (every device gets the input
image), each segment's group convolutions and batch norms sliced to its groups (run as one group
convolution with as many groups as the device holds), and the columns of the head's linear layer that read
its channels' pooled features. The branches' partial products summed over all devices, passed through the
head's tail (the identity for a ResNet, the rest of the MLP for a VGG, held by device 0 only), are the
model's logits. The model is read through the decoupled contract (``decnn.models.decoupled``) only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from decnn.models.decoupled import verify_decoupled
from decnn.partition.exchange_plans import exchange_plans, local_exchange
from decnn.wire.exchange import ShufflePlan
from decnn.wire.placement import Placement

Exchange = Callable[[int, torch.Tensor], torch.Tensor]
Reduce = Callable[[torch.Tensor], torch.Tensor]


class Branch(nn.Module):
    """One device's share of a decoupled model.

    ``forward(x, exchange, reduce)`` runs it end to end, calling ``exchange(i, activation)`` at shuffle
    point i and ``reduce(partial)`` to sum the partial products over the branches; ``segment``, ``head`` and
    ``finish`` let a driver interleave several branches or images. ``finish`` belongs to device 0 only.
    """

    def __init__(
        self, stem: nn.Module, segments: nn.ModuleList, pool: nn.Module, fc: nn.Linear, tail: nn.Module | None,
        plans: list[ShufflePlan],
    ):
        super().__init__()
        self.stem, self.segments, self.pool, self.fc, self.tail = stem, segments, pool, fc, tail
        self.plans = plans

    @property
    def num_shuffles(self) -> int:
        return len(self.plans)

    def segment(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Segment i (the stem runs first, on the full input image)."""
        return self.segments[i](self.stem(x) if i == 0 else x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """This branch's partial product of the head's linear layer (only device 0 adds the bias)."""
        return self.fc(self.pool(x))

    def finish(self, summed: torch.Tensor) -> torch.Tensor:
        """The logits from the sum of all branches' ``head`` outputs (device 0's branch only)."""
        if self.tail is None:
            raise RuntimeError("only device 0's branch holds the head's tail: reduce the partial products there")
        return self.tail(summed)

    def forward(self, x: torch.Tensor, exchange: Exchange, reduce: Reduce) -> torch.Tensor | None:
        """The logits on device 0, None elsewhere."""
        for i in range(len(self.segments)):
            x = self.segment(i, x)
            if i < self.num_shuffles:
                x = exchange(i, x)
        summed = reduce(self.head(x))
        return None if self.tail is None else self.finish(summed)


def _local(placement: Placement, channels: int, device: int) -> torch.Tensor:
    """The global indices of ``device``'s channels of a layer of ``channels``, as a tensor."""
    return torch.from_numpy(placement.local_channels(channels, device))


def _slice_conv(conv: nn.Conv2d, out_index: torch.Tensor, groups: int) -> nn.Conv2d:
    """Keep the output channels ``out_index``; their input channels are the matching local groups."""
    in_channels = conv.in_channels // conv.groups * groups
    sliced = nn.Conv2d(
        in_channels, len(out_index), conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups,
        conv.bias is not None, conv.padding_mode, device=conv.weight.device,
    )
    sliced.weight.data.copy_(conv.weight.data[out_index])
    if conv.bias is not None:
        sliced.bias.data.copy_(conv.bias.data[out_index])
    return sliced


def _slice_bn(bn: nn.BatchNorm2d, index: torch.Tensor) -> nn.BatchNorm2d:
    device = next(bn.buffers()).device
    sliced = nn.BatchNorm2d(len(index), bn.eps, bn.momentum, bn.affine, bn.track_running_stats, device=device)
    for name in ("weight", "bias", "running_mean", "running_var"):
        if getattr(bn, name) is not None:
            getattr(sliced, name).data.copy_(getattr(bn, name).data[index])
    if bn.num_batches_tracked is not None:
        sliced.num_batches_tracked.copy_(bn.num_batches_tracked)
    return sliced


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _weightless_copy(module: nn.Module) -> nn.Module:
    """A deep copy whose weights are on the ``meta`` device: copying them would read every group's weights
    (all of a memory-mapped checkpoint) only for the slices to replace them."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad) for p in module.parameters()}
    memo.update({id(b): torch.empty_like(b, device="meta") for b in module.buffers()})
    return copy.deepcopy(module, memo)


def _slice_segment(segment: nn.Module, placement: Placement, device: int) -> nn.Module:
    """Slice every group conv and batch norm of a segment (checked by verify_decoupled) to ``device``'s groups."""
    sliced = _weightless_copy(segment)
    local_groups = len(placement.devices[device])
    for name, m in segment.named_modules():
        if isinstance(m, nn.Conv2d):
            _replace(sliced, name, _slice_conv(m, _local(placement, m.out_channels, device), local_groups))
        elif isinstance(m, nn.BatchNorm2d):
            _replace(sliced, name, _slice_bn(m, _local(placement, m.num_features, device)))
    return sliced


def _slice_stem(stem: nn.Sequential, placement: Placement, device: int) -> nn.Sequential:
    """The dense stem computes only this device's output channels: slice its last conv and what follows."""
    stem = copy.deepcopy(stem)
    last_conv = max(i for i, m in enumerate(stem) if isinstance(m, nn.Conv2d))
    index = _local(placement, stem[last_conv].out_channels, device)
    stem[last_conv] = _slice_conv(stem[last_conv], index, groups=1)
    for i in range(last_conv + 1, len(stem)):
        if isinstance(stem[i], nn.BatchNorm2d):
            stem[i] = _slice_bn(stem[i], index)
    return stem


@torch.no_grad()
def _feature_channels(pool: nn.Module, channels: torch.Tensor) -> torch.Tensor:
    """The input channel (a value of ``channels``) that each feature of ``pool`` reads.

    The head's pool is per-channel (any spatial pooling, flattened), so a probe whose channel c is the
    constant ``channels[c]`` gives features equal to the channel they come from, wherever the pool puts them.
    """
    probe = channels.to(torch.float64).add(1).view(1, -1, 1, 1)
    return pool(probe).flatten().round().long() - 1


def _head_columns(pool: nn.Module, channels: int, local: torch.Tensor) -> torch.Tensor:
    """The linear layer's input columns for a branch's pooled features, in the branch's feature order.

    The k-th feature of channel c in the branch is the k-th feature of channel c in the whole model.
    """
    whole = _feature_channels(pool, torch.arange(channels))
    part = _feature_channels(pool, local)
    order = torch.argsort(whole, stable=True)  # columns grouped by channel, each channel's in feature order
    first = torch.searchsorted(whole[order], part)  # where channel c's columns start in ``order``
    by_channel = torch.argsort(part, stable=True)
    sorted_part = part[by_channel]
    rank = torch.empty_like(part)  # k for the k-th feature of its channel in the branch
    rank[by_channel] = torch.arange(len(part)) - torch.searchsorted(sorted_part, sorted_part)
    return order[first + rank]


def _slice_fc(fc: nn.Linear, columns: torch.Tensor, with_bias: bool) -> nn.Linear:
    sliced = nn.Linear(len(columns), fc.out_features, bias=with_bias, device=fc.weight.device)
    sliced.weight.data.copy_(fc.weight.data[:, columns])
    if with_bias:
        sliced.bias.data.copy_(fc.bias.data)
    return sliced


def extract_branch(model: nn.Module, placement: Placement, device: int) -> Branch:
    """Device ``device``'s branch of a decoupled model (one that passes ``verify_decoupled``).

    The slices live where the model's weights do: a model on the ``meta`` device gives a weightless
    skeleton of the branch, ready to be filled from a shard.
    """
    verify_decoupled(model)
    if placement.groups != model.groups:
        raise ValueError(f"placement is for {placement.groups} groups, the model has {model.groups}")
    if not 0 <= device < placement.num_devices:
        raise ValueError(f"device {device} out of range for {placement.num_devices} devices")
    plans = [exchange_plans(s.permutation, placement)[device] for s in model.shuffles]
    segments = nn.ModuleList(_slice_segment(seg, placement, device) for seg in model.segments)
    head = model.head_parts()
    channels = model.num_features
    columns = _head_columns(head.pool, channels, _local(placement, channels, device))
    fc = _slice_fc(head.linear, columns, with_bias=device == 0)
    tail = copy.deepcopy(head.tail) if device == 0 else None
    branch = Branch(_slice_stem(model.stem, placement, device), segments, copy.deepcopy(head.pool), fc, tail, plans)
    return branch.train(model.training)


def extract_branches(model: nn.Module, placement: Placement) -> list[Branch]:
    return [extract_branch(model, placement, d) for d in range(placement.num_devices)]


def run_branches_locally(
    branches: list[Branch],
    x: torch.Tensor,
    exchange: Callable[[list[ShufflePlan], list[torch.Tensor]], list[torch.Tensor]] = local_exchange,
    on_step: Callable[[int, int, Callable[[], torch.Tensor]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run all branches in one process with the reference exchange; returns the model's logits.

    ``exchange`` replaces the reference exchange (e.g. one that round-trips a codec); ``on_step(d, i, run)``
    wraps each step of device d, segment i (i == number of segments: the head), and must return ``run()``:
    a cost model times the steps with it.
    """
    def step(d: int, i: int, run: Callable[[], torch.Tensor]) -> torch.Tensor:
        return on_step(d, i, run) if on_step else run()

    last = len(branches[0].segments)
    outs = [step(d, 0, lambda b=b: b.segment(0, x)) for d, b in enumerate(branches)]
    for i in range(branches[0].num_shuffles):
        outs = exchange([b.plans[i] for b in branches], outs)
        outs = [step(d, i + 1, lambda b=b, o=o, i=i: b.segment(i + 1, o))
                for d, (b, o) in enumerate(zip(branches, outs))]
    return branches[0].finish(torch.stack([step(d, last, lambda b=b, o=o: b.head(o))
                                           for d, (b, o) in enumerate(zip(branches, outs))]).sum(0))
