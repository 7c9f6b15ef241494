"""The contract of a decoupled model, and its one check (``verify_decoupled``).

A decoupled model is a chain ``stem - segment - shuffle - segment - ... - segment - head``:

- ``stem``: a dense ``nn.Sequential``; its last convolution computes the channels that the branches split,
  and only per-channel layers (batch norm, activations, pooling) may follow it.
- ``segments``: ``nn.ModuleList``; inside a segment every convolution has ``groups`` groups, so output group g
  depends on input group g only. Only ``Conv2d`` and ``BatchNorm2d`` hold weights there.
- ``shuffles``: ``nn.ModuleList`` of ``ChannelShuffle``, one between each two segments: the only places where
  the branches exchange data.
- the head, as ``head_parts()``: a per-channel ``pool`` (features of a channel depend on that channel only),
  a ``linear`` layer that the branches split by its *input* features (each computes a partial product; the
  partial products add up), and a ``tail`` applied to that sum (the identity for a ResNet, the rest of the
  MLP for a VGG).

Partitioning, split inference and the pipeline cutter read a model through this contract only, after
``verify_decoupled``; none of them knows a particular architecture.
"""

# No ``from __future__ import annotations`` in the model files: torch.fx copies forward's annotations into the
# code it generates, and TorchScript cannot resolve them as strings (timm's fx -> TorchScript test).
from dataclasses import dataclass

import torch
from timm.layers import SelectAdaptivePool2d
from timm.models._features import feature_take_indices
from torch import nn

__all__ = ["ChannelShuffle", "DecoupledModelError", "DecoupledNet", "HeadParts", "verify_decoupled"]


class DecoupledModelError(ValueError):
    """A model that does not keep the decoupled contract; the message names the offending part."""


class ChannelShuffle(nn.Module):
    """The authors' channel shuffle: output group g takes every ``groups``-th input channel, starting at g.

    Output channel ``j`` is input channel ``permutation[j] = (j % per_group) * groups + j // per_group``: the
    reference code reshapes to ``(B, C/G, G, H, W)`` and swaps the two channel axes. ShuffleNet's shuffle is
    the inverse permutation; both mix the groups alike, but only this one makes the authors' trained weights
    load and their activations correspond channel for channel, so decnn uses it. The forward pass is the same
    reshape, which is faster than indexing (and traces with torch.fx).
    """

    def __init__(self, channels: int, groups: int):
        super().__init__()
        if channels % groups:
            raise ValueError(f"{channels} channels cannot be shuffled in {groups} groups")
        self.channels, self.groups = channels, groups

    @property
    def permutation(self) -> torch.Tensor:
        per_group = self.channels // self.groups
        j = torch.arange(self.channels)
        return (j % per_group) * self.groups + j // per_group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (self.channels // self.groups, self.groups)).transpose(1, 2).flatten(1, 2)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"


@dataclass(frozen=True)
class HeadParts:
    """The head as the branches split it: ``tail(sum over branches of linear_b(pool(x_b)))``."""

    pool: nn.Module
    linear: nn.Linear
    tail: nn.Module


class DecoupledNet(nn.Module):
    """Base of the decoupled models: the chain's forward pass and the timm feature API.

    A subclass builds ``stem``, ``segments``, ``shuffles`` and its head, sets ``groups``, ``width``,
    ``stem_kind`` (the ResNets' "tiny"/"imagenet"; None for a model with one stem), ``num_features``,
    ``head_hidden_size``, ``num_classes`` and ``feature_info`` (one entry per feature tap, ``module`` naming
    the module whose output it is), and implements ``forward_head``, ``head_parts``, ``get_classifier`` and
    ``reset_classifier``. (No class-level annotations: TorchScript would read them as attribute types.)
    """

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for segment, shuffle in zip(self.segments, self.shuffles):
            x = shuffle(segment(x))
        return self.segments[-1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _tapped_modules(self) -> list[tuple[str, nn.Module]]:
        """The chain as (name, module) in forward order, a shuffle right after the segment end it follows."""
        chain = [("stem", self.stem)]
        for s, segment in enumerate(self.segments):
            chain += [(f"segments.{s}.{i}", m) for i, m in enumerate(segment)]
            if s < len(self.shuffles):
                chain.append((f"shuffles.{s}", self.shuffles[s]))
        return chain

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's feature API: the outputs of the ``feature_info`` taps (and the final features)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: decnn models produce NCHW features only")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        taps = {info["module"]: i for i, info in enumerate(self.feature_info)}
        intermediates = []
        for name, module in self._tapped_modules():
            x = module(x)
            if taps.get(name) in take:
                intermediates.append(x)
                if (stop_early or intermediates_only) and taps[name] == max_index:
                    break
        return intermediates if intermediates_only else (x, intermediates)

    def head_parts(self) -> HeadParts:
        raise NotImplementedError

    def verify(self) -> None:
        """Raise DecoupledModelError unless this model keeps the contract (see the module docstring)."""
        name = type(self).__name__
        if not isinstance(self.groups, int) or self.groups < 1:
            raise DecoupledModelError(f"{name}.groups must be an int >= 1, got {self.groups!r}")
        if not isinstance(self.stem, nn.Sequential) or not any(isinstance(m, nn.Conv2d) for m in self.stem):
            raise DecoupledModelError(f"{name}.stem must be an nn.Sequential holding a Conv2d")
        last_conv = max(i for i, m in enumerate(self.stem) if isinstance(m, nn.Conv2d))
        for i, m in enumerate(self.stem[last_conv + 1:], start=last_conv + 1):
            if not isinstance(m, PER_CHANNEL):
                raise DecoupledModelError(f"stem.{i} ({type(m).__name__}) after the last stem conv: not per-channel")
        if not isinstance(self.segments, nn.ModuleList) or not isinstance(self.shuffles, nn.ModuleList):
            raise DecoupledModelError(f"{name}.segments and .shuffles must be nn.ModuleLists")
        if len(self.shuffles) != len(self.segments) - 1:
            raise DecoupledModelError(
                f"{name} has {len(self.segments)} segments and {len(self.shuffles)} shuffles; "
                "there must be one shuffle between each two segments"
            )
        for s, shuffle in enumerate(self.shuffles):
            if not isinstance(shuffle, ChannelShuffle):
                raise DecoupledModelError(f"shuffles.{s} is a {type(shuffle).__name__}, not a ChannelShuffle")
        for s, segment in enumerate(self.segments):
            for path, m in segment.named_modules(prefix=f"segments.{s}"):
                if isinstance(m, nn.Conv2d):
                    if m.groups != self.groups:
                        raise DecoupledModelError(
                            f"{path} has groups={m.groups}, but the model is split into {self.groups} groups: "
                            "every convolution between shuffle points must be grouped for the branches to decouple"
                        )
                elif not isinstance(m, nn.BatchNorm2d) and next(_own_state(m), None) is not None:
                    raise DecoupledModelError(
                        f"{path} ({type(m).__name__}) holds weights: only Conv2d and BatchNorm2d can be sliced"
                    )
        parts = self.head_parts()
        if not isinstance(parts.linear, nn.Linear):
            raise DecoupledModelError(
                f"{name}'s head has no linear layer to split (a {type(parts.linear).__name__}); "
                "give it a classifier, e.g. reset_classifier(10)"
            )


PER_CHANNEL = (nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Identity)


def _own_state(module: nn.Module):
    yield from module.parameters(recurse=False)
    yield from module.buffers(recurse=False)


def verify_decoupled(model: nn.Module) -> DecoupledNet:
    """The one check partitioning, split inference and the pipeline cutter run before reading a model."""
    if not isinstance(model, DecoupledNet):
        raise DecoupledModelError(
            f"{type(model).__name__} is not a decoupled model: build one with timm.create_model('decnn_...') "
            "or subclass decnn.models.DecoupledNet"
        )
    model.verify()
    return model


def make_global_pool(pool_type: str) -> SelectAdaptivePool2d:
    """timm's selectable global pooling, flattened; ``""`` passes the feature map through unflattened."""
    return SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
