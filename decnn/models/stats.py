"""Parameter and FLOP counts (torch's own FlopCounterMode) for the model table and the golden tests."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def model_names() -> list[str]:
    """Every registered DeCNN model."""
    return timm.list_models("decnn_*")


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 64, 64), forward=None) -> int:
    """FLOPs (2 per multiply-add) of one forward pass at ``input_size``; ``forward`` overrides ``model``."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        (forward or model)(torch.zeros(input_size))
    model.train(was_training)
    return counter.get_total_flops()


GOLDEN_PATH = Path(__file__).with_name("golden.json")


def golden_stats() -> dict[str, dict]:
    """Params and FLOPs of every registered model with its defaults (at 64x64), and of the authors' zoo at
    224x224 (``reference_zoo_224``); compared in the tests."""
    from decnn.models.reference import REFERENCE_ZOO

    stats: dict[str, dict] = {}
    for name in model_names():
        model = timm.create_model(name)
        stats[name] = {"params": count_params(model), "flops_64": count_flops(model)}
    stats["reference_zoo_224"] = {}
    for arch, (name, kwargs) in REFERENCE_ZOO.items():
        model = timm.create_model(name, **kwargs)
        flops = count_flops(model, (1, 3, 224, 224))
        stats["reference_zoo_224"][arch] = {"params": count_params(model), "flops_224": flops}
    return stats
