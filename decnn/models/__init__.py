"""The DeCNN model zoo. Importing this package registers the models with timm."""

from decnn.models.decoupled import ChannelShuffle, DecoupledModelError, DecoupledNet, HeadParts, verify_decoupled
from decnn.models.decoupled_resnet import STEMS, BasicBlock, Bottleneck, DecoupledResNet
from decnn.models.decoupled_vgg import DecoupledVGG
from decnn.models.stats import count_flops, count_params, model_names

__all__ = [
    "STEMS",
    "BasicBlock",
    "Bottleneck",
    "ChannelShuffle",
    "DecoupledModelError",
    "DecoupledNet",
    "DecoupledResNet",
    "DecoupledVGG",
    "HeadParts",
    "count_flops",
    "count_params",
    "model_names",
    "verify_decoupled",
]
