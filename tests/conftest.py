"""Shared test helpers."""

import pytest
import torch
from torch import nn

import decnn  # noqa: F401  (registers the models with timm)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and batch-norm statistics: the init (zeroed BN gammas) would hide permutation bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
