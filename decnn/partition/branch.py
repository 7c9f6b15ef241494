"""Branches: a decoupled model restricted to one device's channel groups.

A branch holds only its own weights: the stem's output rows for its channels (every device gets the input
image), each segment's group convolutions and batch norms sliced to its groups (run as one group
convolution with as many groups as the device holds), and the classifier's columns for its channels. The
branch's partial logits summed over all devices are the model's logits.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from decnn.partition.exchange import ExchangePlan, exchange_plans, local_exchange
from decnn.partition.placement import Placement

Exchange = Callable[[int, torch.Tensor], torch.Tensor]


class Branch(nn.Module):
    """One device's share of a decoupled model.

    ``forward(x, exchange)`` runs it end to end, calling ``exchange(i, activation)`` at shuffle point i;
    ``segment`` and ``head`` let a driver interleave several branches or images.
    """

    def __init__(self, stem: nn.Module, segments: nn.ModuleList, fc: nn.Linear, plans: list[ExchangePlan]):
        super().__init__()
        self.stem, self.segments, self.fc = stem, segments, fc
        self.plans = plans
        self.global_pool = nn.AdaptiveAvgPool2d(1)

    @property
    def num_shuffles(self) -> int:
        return len(self.plans)

    def segment(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Segment i (the stem runs first, on the full input image)."""
        return self.segments[i](self.stem(x) if i == 0 else x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """This branch's partial logits (only device 0 adds the bias)."""
        return self.fc(self.global_pool(x).flatten(1))

    def forward(self, x: torch.Tensor, exchange: Exchange) -> torch.Tensor:
        for i in range(len(self.segments)):
            x = self.segment(i, x)
            if i < self.num_shuffles:
                x = exchange(i, x)
        return self.head(x)


def _slice_conv(conv: nn.Conv2d, out_index: torch.Tensor, groups: int) -> nn.Conv2d:
    """Keep the output channels ``out_index``; their input channels are the matching local groups."""
    in_channels = conv.in_channels // conv.groups * groups
    sliced = nn.Conv2d(
        in_channels, len(out_index), conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups,
        conv.bias is not None, conv.padding_mode,
    )
    sliced.weight.data.copy_(conv.weight.data[out_index])
    if conv.bias is not None:
        sliced.bias.data.copy_(conv.bias.data[out_index])
    return sliced


def _slice_bn(bn: nn.BatchNorm2d, index: torch.Tensor) -> nn.BatchNorm2d:
    sliced = nn.BatchNorm2d(len(index), bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    for name in ("weight", "bias", "running_mean", "running_var"):
        if getattr(bn, name) is not None:
            getattr(sliced, name).data.copy_(getattr(bn, name).data[index])
    if bn.num_batches_tracked is not None:
        sliced.num_batches_tracked.copy_(bn.num_batches_tracked)
    return sliced


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _slice_segment(segment: nn.Module, placement: Placement, device: int) -> nn.Module:
    """Slice every group conv and batch norm of a segment to ``device``'s groups."""
    segment = copy.deepcopy(segment)
    local_groups = len(placement.devices[device])
    for name, m in list(segment.named_modules()):
        if isinstance(m, nn.Conv2d):
            if m.groups != placement.groups:
                raise ValueError(
                    f"{name} has groups={m.groups}, but the model is split into {placement.groups} groups: "
                    "every convolution between shuffle points must be grouped for the branches to decouple"
                )
            _replace(segment, name, _slice_conv(m, placement.local_channels(m.out_channels, device), local_groups))
        elif isinstance(m, nn.BatchNorm2d):
            _replace(segment, name, _slice_bn(m, placement.local_channels(m.num_features, device)))
        elif any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False)):
            raise ValueError(f"cannot slice {name} ({type(m).__name__}): only Conv2d and BatchNorm2d hold weights")
    return segment


def _slice_stem(stem: nn.Sequential, placement: Placement, device: int) -> nn.Sequential:
    """The dense stem computes only this device's output channels: slice its last conv and what follows."""
    stem = copy.deepcopy(stem)
    last_conv = max(i for i, m in enumerate(stem) if isinstance(m, nn.Conv2d))
    index = placement.local_channels(stem[last_conv].out_channels, device)
    stem[last_conv] = _slice_conv(stem[last_conv], index, groups=1)
    for i in range(last_conv + 1, len(stem)):
        if isinstance(stem[i], nn.BatchNorm2d):
            stem[i] = _slice_bn(stem[i], index)
    return stem


def _slice_fc(fc: nn.Linear, index: torch.Tensor, with_bias: bool) -> nn.Linear:
    sliced = nn.Linear(len(index), fc.out_features, bias=with_bias)
    sliced.weight.data.copy_(fc.weight.data[:, index])
    if with_bias:
        sliced.bias.data.copy_(fc.bias.data)
    return sliced


def extract_branch(model: nn.Module, placement: Placement, device: int) -> Branch:
    """Device ``device``'s branch of a decoupled model (``stem``, ``segments``, ``shuffles``, ``fc``)."""
    if placement.groups != model.groups:
        raise ValueError(f"placement is for {placement.groups} groups, the model has {model.groups}")
    if not 0 <= device < placement.num_devices:
        raise ValueError(f"device {device} out of range for {placement.num_devices} devices")
    plans = [exchange_plans(s.permutation, placement)[device] for s in model.shuffles]
    segments = nn.ModuleList(_slice_segment(seg, placement, device) for seg in model.segments)
    fc = _slice_fc(model.fc, placement.local_channels(model.fc.in_features, device), with_bias=device == 0)
    branch = Branch(_slice_stem(model.stem, placement, device), segments, fc, plans)
    return branch.train(model.training)


def extract_branches(model: nn.Module, placement: Placement) -> list[Branch]:
    return [extract_branch(model, placement, d) for d in range(placement.num_devices)]


def run_branches_locally(
    branches: list[Branch],
    x: torch.Tensor,
    exchange: Callable[[list[ExchangePlan], list[torch.Tensor]], list[torch.Tensor]] = local_exchange,
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
    return torch.stack([step(d, last, lambda b=b, o=o: b.head(o))
                        for d, (b, o) in enumerate(zip(branches, outs))]).sum(0)
