"""The decoupled VGG-16 with batch norm of the authors' code (their ``vgg16_bn_s3_addchannel_v2``), in timm.

VGG-16's thirteen 3x3 convolutions, each followed by batch norm and ReLU, with a 2x2 max-pool after convs
2, 4, 7, 10 and 13 (1-based). The first convolution is dense (the stem); every other one has ``groups``
groups and ``width`` times VGG-16's channels (64/128/256/512), except the last, which narrows to
``num_features`` channels so that the classifier keeps VGG-16's size. A channel shuffle follows the convs
listed in ``shuffle_after`` (0-based). The head is VGG's: an adaptive average pool to 7x7 (the identity at
224x224), then the MLP 512*7*7 -> 4096 -> 4096 -> classes with ReLU and dropout. ``global_pool=""`` (only
without a classifier, as in timm) passes the feature map through: no grid, so no MLP either.

For split inference the MLP's first layer is split by its input features (each device multiplies its own
channels' 49 columns each); the partial products are summed before its ReLU, and the rest of the MLP runs
on the sum.

``timm.create_model("decnn_vgg16_bn", num_classes=1000)`` at 224x224 is the authors' VGG-16-bn x1.75; the
default (200 classes, 64x64 input) is the Tiny-ImageNet adaptation. ``groups=1, width=1, stem_width=64``
is torchvision's ``vgg16_bn``.
"""

from collections.abc import Sequence

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from decnn.common.normalization import TINY_MEAN, TINY_STD
from decnn.models.decoupled import ChannelShuffle, DecoupledNet, HeadParts

__all__ = ["DecoupledVGG"]

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
POOL_TYPES = ("avg", "max")
GRID = 7  # VGG's classifier sees a 7x7 grid of features


class DecoupledVGG(DecoupledNet):
    """VGG-16-bn whose convolutions after the first form ``groups`` branches, shuffled after ``shuffle_after``.

    Args:
        groups: number of branches (1 = a plain VGG-16-bn).
        width: channel multiplier of every conv after the first, but the last.
        stem_width: output channels of the first (dense) conv; the authors use 96 at x1.75.
        num_features: output channels of the last conv (VGG-16's 512, so the classifier keeps its size).
        shuffle_after: 0-based conv indices (1..11) followed by a channel shuffle.
        mlp_hidden: width of the MLP's two hidden layers.
        num_classes: classifier outputs (0: no classifier, ``forward`` returns the MLP's last hidden layer).
        in_chans: input channels.
        drop_rate: dropout after each hidden layer of the MLP.
        global_pool: ``"avg"`` or ``"max"``: how the feature map is pooled to the MLP's 7x7 grid; ``""`` (with
            ``num_classes=0``): no head, ``forward`` returns the feature map.
    """

    def __init__(
        self,
        groups: int = 4,
        width: float = 1.75,
        stem_width: int = 96,
        num_features: int = 512,
        shuffle_after: Sequence[int] = (4, 8),
        mlp_hidden: int = 4096,
        num_classes: int = 200,
        in_chans: int = 3,
        drop_rate: float = 0.5,
        global_pool: str = "avg",
    ):
        super().__init__()
        convs = [v for v in VGG16 if v != "M"]
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        shuffle_after = sorted(set(shuffle_after))
        if any(not 1 <= s < len(convs) - 1 for s in shuffle_after):
            raise ValueError(
                f"shuffle_after={list(shuffle_after)}: conv indices must lie in 1..{len(convs) - 2} "
                "(conv 0 is the dense stem; a shuffle after the last conv would only permute the classifier's inputs)"
            )
        widths = [stem_width] + [round(c * width) for c in convs[1:-1]] + [num_features]
        for i, c in enumerate(widths):
            if c % groups:
                raise ValueError(
                    f"conv {i} has {c} channels (width={width}, stem_width={stem_width}, "
                    f"num_features={num_features}), not divisible by groups={groups}"
                )
        self.groups, self.width, self.stem_kind, self.drop_rate = groups, width, None, drop_rate

        self.feature_info = []
        layers, segments, shuffles, conv, reduction = [], [], [], 0, 1
        cin = in_chans
        for v in VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                reduction *= 2
                module = f"segments.{len(segments)}.{len(layers) - 1}"
                self.feature_info.append({"num_chs": cin, "reduction": reduction, "module": module})
                continue
            cout = widths[conv]
            layers += [nn.Conv2d(cin, cout, 3, padding=1, groups=1 if conv == 0 else groups),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
            if conv == 0:
                self.stem, layers = nn.Sequential(*layers), []
            if conv in shuffle_after:
                segments.append(nn.Sequential(*layers))
                shuffles.append(ChannelShuffle(cout, groups))
                layers = []
            conv += 1
        segments.append(nn.Sequential(*layers))
        self.segments = nn.ModuleList(segments)
        self.shuffles = nn.ModuleList(shuffles)
        self.num_features, self.head_hidden_size = num_features, mlp_hidden

        self.fc1 = nn.Linear(num_features * GRID * GRID, mlp_hidden)
        self.mlp = _Hidden(mlp_hidden, drop_rate)
        self.pool_type = "avg"
        self.reset_classifier(num_classes, global_pool)
        self._init_weights()

    def _init_weights(self) -> None:
        # As the authors' code (and torchvision's VGG): He-normal convs (fan-out), BN scale 1, N(0, 0.01) linears.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if not self.pool_type:
            return x
        x = self.mlp(self.fc1(self.pool(x)))
        return x if pre_logits else self.fc(x)

    def head_parts(self) -> HeadParts:
        if not self.pool_type:  # no head: nothing for the branches to split (verify names the remedy)
            return HeadParts(pool=self.pool, linear=self.fc, tail=nn.Identity())
        return HeadParts(pool=self.pool, linear=self.fc1, tail=nn.Sequential(self.mlp, self.fc))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for ``num_classes`` (0: none); ``global_pool`` (when given) replaces the pooling."""
        pool_type = self.pool_type if global_pool is None else global_pool
        if pool_type not in POOL_TYPES and not (pool_type == "" and num_classes == 0):
            raise ValueError(
                f"global_pool={pool_type!r}: the VGG's MLP needs a {GRID}x{GRID} grid; choose one of {POOL_TYPES}, "
                "or '' (no head) with num_classes=0"
            )
        self.pool_type, self.pool = pool_type, _grid_pool(pool_type)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes else nn.Identity()


class _Hidden(nn.Module):
    """The MLP between its first layer's product and the classifier: ReLU, dropout, linear, ReLU, dropout."""

    def __init__(self, hidden: int, drop_rate: float):
        super().__init__()
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(x))
        return self.drop(self.act(self.fc2(x)))


def _grid_pool(pool_type: str) -> nn.Module:
    if not pool_type:
        return nn.Identity()
    pool = nn.AdaptiveAvgPool2d(GRID) if pool_type == "avg" else nn.AdaptiveMaxPool2d(GRID)
    return nn.Sequential(pool, nn.Flatten(1))


default_cfgs = generate_default_cfgs({
    "decnn_vgg16_bn": {
        "num_classes": 200,
        "input_size": (3, 64, 64),
        "pool_size": (2, 2),
        "mean": TINY_MEAN,
        "std": TINY_STD,
        "first_conv": "stem.0",
        "classifier": "fc",
    }
})


@register_model
def decnn_vgg16_bn(pretrained: bool = False, **kwargs) -> DecoupledVGG:
    """DeCNN VGG-16-bn x1.75 of the authors' code: 4 groups, shuffles after convs 5 and 9 (1-based)."""
    # Feature taps can sit inside a segment, so timm's features_only wrapper uses forward_intermediates.
    return build_model_with_cfg(
        DecoupledVGG, "decnn_vgg16_bn", pretrained, feature_cfg={"feature_cls": "getter"}, **kwargs
    )
