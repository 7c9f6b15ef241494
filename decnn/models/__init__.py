"""The DeCNN model zoo. Importing this package registers the models with timm."""

from decnn.models.decoupled_resnet import STEMS, BasicBlock, Bottleneck, ChannelShuffle, DecoupledResNet
from decnn.models.stats import count_flops, count_params, model_names

__all__ = [
    "STEMS",
    "BasicBlock",
    "Bottleneck",
    "ChannelShuffle",
    "DecoupledResNet",
    "count_flops",
    "count_params",
    "model_names",
]
