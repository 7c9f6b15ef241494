"""Decoupled ResNets (DeCNN, Du et al., IEEE TPDS 2020) registered with timm.

Every convolution after the stem is a group convolution with ``groups`` groups, so the network is ``groups``
independent branches between shuffle points. A channel shuffle after a stage mixes the branches; it is the
only place where branches exchange data. ``width`` widens all stages to win back the accuracy that grouping
costs (the paper's ResNet-34 "s3_x15": groups=4, width=1.5, shuffles after stages 1-3).

The model keeps the decoupled contract (``decnn.models.decoupled``): ``stem`` (dense), ``segments`` (the runs
of blocks between shuffle points), ``shuffles`` (one per boundary between segments) and a head of global
pooling and ``fc``.

The paper's models are the ImageNet ones of the authors' code: ``timm.create_model("decnn_resnet34",
stem="imagenet", num_classes=1000)`` is their ``resnet34_s3_x15`` (``width=1.75``: ``resnet34_s3_x175``);
``decnn_resnet50`` with the same arguments and ``width=1.5`` or ``1.75`` is ``resnet50_s3_addchannel`` or
``resnet50_s3_addchannel175``. The defaults (``stem="tiny"``, 200 classes) adapt them to Tiny-ImageNet.
"""

from collections.abc import Sequence

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from decnn.common.normalization import TINY_MEAN, TINY_STD
from decnn.models.decoupled import ChannelShuffle, DecoupledNet, HeadParts, make_global_pool

__all__ = ["BasicBlock", "Bottleneck", "DecoupledResNet"]

STEMS = ("tiny", "imagenet")
STAGE_PLANES = (64, 128, 256, 512)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """Two 3x3 group convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, mid: int, stride: int, groups: int):
        super().__init__()
        cout = mid * self.expansion
        self.conv1, self.bn1 = _conv_bn(cin, mid, 3, stride, groups)
        self.conv2, self.bn2 = _conv_bn(mid, cout, 3, 1, groups)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, cout, stride, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 group convolutions with a residual connection (ResNet-50), stride on the 3x3.

    Unlike ResNeXt, the 1x1 convolutions are grouped too: a dense 1x1 would couple the branches.
    """

    expansion = 4

    def __init__(self, cin: int, mid: int, stride: int, groups: int):
        super().__init__()
        cout = mid * self.expansion
        self.conv1, self.bn1 = _conv_bn(cin, mid, 1, 1, groups)
        self.conv2, self.bn2 = _conv_bn(mid, mid, 3, stride, groups)
        self.conv3, self.bn3 = _conv_bn(mid, cout, 1, 1, groups)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, cout, stride, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


def _downsample(cin: int, cout: int, stride: int, groups: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(*_conv_bn(cin, cout, 1, stride, groups))


def stage_widths(width: float, groups: int) -> list[int]:
    """Bottleneck widths of the four stages, checked against ``groups``."""
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    widths = [round(p * width) for p in STAGE_PLANES]
    for stage, c in enumerate(widths, start=1):
        if c % groups:
            ok = [w for w in (1.0, 1.25, 1.5, 1.75, 2.0) if all(round(p * w) % groups == 0 for p in STAGE_PLANES)]
            raise ValueError(
                f"width={width} gives {c} channels in stage {stage}, not divisible by groups={groups}; "
                f"widths that work with groups={groups}: {ok}"
            )
    return widths


class DecoupledResNet(DecoupledNet):
    """A ResNet whose convolutions after the stem form ``groups`` branches, shuffled after ``shuffle_after``.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-34.
        groups: number of branches (1 = a plain ResNet).
        width: channel multiplier for every stage (the stem matches stage 1).
        num_classes: classifier outputs (0: no classifier, ``forward`` returns the pooled features).
        stem: ``"tiny"`` (3x3/1, no max-pool; for 64x64 inputs) or ``"imagenet"`` (7x7/2 + 3x3/2 max-pool).
        shuffle_after: stage indices (0-based, each < 3) followed by a channel shuffle.
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        global_pool: timm's pooling type (``"avg"``, ``"max"``, ``"avgmax"``, ``"catavgmax"``; ``""`` = none).
        zero_init_last: start every residual block as an identity (zero scale of its last batch norm); the
            authors' code sets every batch-norm scale to 1, the default here.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        groups: int = 4,
        width: float = 1.5,
        num_classes: int = 200,
        stem: str = "tiny",
        shuffle_after: Sequence[int] = (0, 1, 2),
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        zero_init_last: bool = False,
    ):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; choose one of {STEMS}")
        shuffle_after = sorted(set(shuffle_after))
        if any(not 0 <= s < len(layers) - 1 for s in shuffle_after):
            raise ValueError(
                f"shuffle_after={list(shuffle_after)}: stage indices must lie in 0..{len(layers) - 2} "
                "(a shuffle after the last stage would only permute the classifier's inputs)"
            )
        widths = stage_widths(width, groups)
        self.groups, self.width, self.stem_kind = groups, width, stem
        self.drop_rate = drop_rate

        imagenet = stem == "imagenet"
        stem_layers = _conv_bn(in_chans, widths[0], 7 if imagenet else 3, 2 if imagenet else 1, 1)
        stem_layers.append(nn.ReLU(inplace=True))
        if imagenet:
            stem_layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem_layers)
        reduction = 4 if imagenet else 1
        self.feature_info = [{"num_chs": widths[0], "reduction": reduction, "module": "stem"}]

        segments, shuffles, current = [], [], []
        cin = widths[0]
        for i, (n, mid) in enumerate(zip(layers, widths, strict=False)):
            for b in range(n):
                current.append(block(cin, mid, 2 if (b == 0 and i > 0) else 1, groups))
                cin = mid * block.expansion
            reduction *= 2 if i > 0 else 1
            tap = f"segments.{len(segments)}.{len(current) - 1}"
            if i in shuffle_after:
                tap = f"shuffles.{len(shuffles)}"
                segments.append(nn.Sequential(*current))
                shuffles.append(ChannelShuffle(cin, groups))
                current = []
            self.feature_info.append({"num_chs": cin, "reduction": reduction, "module": tap})
        segments.append(nn.Sequential(*current))
        self.segments = nn.ModuleList(segments)
        self.shuffles = nn.ModuleList(shuffles)
        self.num_features = self.head_hidden_size = cin
        self.reset_classifier(num_classes, global_pool)
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        # As the authors' code: He-normal convs (fan-out), every BN scale 1, PyTorch's default for the fc.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:  # blocks start as identities, which often trains better (Goyal et al., 2017)
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_((m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def head_parts(self) -> HeadParts:
        return HeadParts(pool=self.global_pool, linear=self.fc, tail=nn.Identity())

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for ``num_classes`` (0: none); ``global_pool`` (when given) replaces the pooling."""
        pool = self.global_pool if global_pool is None else make_global_pool(global_pool)
        if num_classes and not pool.pool_type:  # timm's rule: a linear classifier needs pooled features
            raise ValueError(f"global_pool='' (no pooling) needs num_classes=0, got {num_classes}")
        self.global_pool, self.num_classes = pool, num_classes
        features = self.num_features * self.global_pool.feat_mult()
        self.fc = nn.Linear(features, num_classes) if num_classes else nn.Identity()


def _cfg(**kwargs) -> dict:
    return {
        "num_classes": 200,
        "input_size": (3, 64, 64),
        "pool_size": (8, 8),
        "mean": TINY_MEAN,
        "std": TINY_STD,
        "first_conv": "stem.0",
        "classifier": "fc",
        **kwargs,
    }


# No weights ship with decnn (train them with train.py): the configs only describe inputs and head.
default_cfgs = generate_default_cfgs(
    {name: _cfg() for name in ("decnn_resnet18", "decnn_resnet34", "decnn_resnet50")}
)


def _create(variant: str, pretrained: bool, **kwargs) -> DecoupledResNet:
    # Feature taps can sit inside a segment, so timm's features_only wrapper uses forward_intermediates.
    return build_model_with_cfg(DecoupledResNet, variant, pretrained, feature_cfg={"feature_cls": "getter"}, **kwargs)


@register_model
def decnn_resnet18(pretrained: bool = False, **kwargs) -> DecoupledResNet:
    """DeCNN ResNet-18: 4 groups, x1.5 width."""
    args = {"block": BasicBlock, "layers": (2, 2, 2, 2), "groups": 4, "width": 1.5}
    return _create("decnn_resnet18", pretrained, **{**args, **kwargs})


@register_model
def decnn_resnet34(pretrained: bool = False, **kwargs) -> DecoupledResNet:
    """DeCNN ResNet-34: 4 groups, x1.5 width, shuffles after stages 1-3. With ``stem="imagenet",
    num_classes=1000`` it is the paper's "s3_x15" (the authors' ``resnet34_s3_x15``)."""
    args = {"block": BasicBlock, "layers": (3, 4, 6, 3), "groups": 4, "width": 1.5}
    return _create("decnn_resnet34", pretrained, **{**args, **kwargs})


@register_model
def decnn_resnet50(pretrained: bool = False, **kwargs) -> DecoupledResNet:
    """DeCNN ResNet-50 (bottleneck): 4 groups, x1.75 width. With ``stem="imagenet", num_classes=1000`` it is
    the authors' ``resnet50_s3_addchannel175`` (``width=1.5``: ``resnet50_s3_addchannel``)."""
    args = {"block": Bottleneck, "layers": (3, 4, 6, 3), "groups": 4, "width": 1.75}
    return _create("decnn_resnet50", pretrained, **{**args, **kwargs})
