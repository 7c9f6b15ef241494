"""Shared test helpers."""

import multiprocessing

import pytest
import torch
from torch import nn

import decnn  # noqa: F401  (registers the models with timm)
from decnn.data import make_standin

# decnn.comm.launch starts its processes with "forkserver": have the server import decnn (torch, timm) once,
# so that the processes the tests launch fork ready instead of importing it afresh, seconds each time.
multiprocessing.set_forkserver_preload(["decnn"])


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


@pytest.fixture(scope="session")
def standin(tmp_path_factory):
    """The offline stand-in dataset, made once for the whole session; a test that damages data uses a copy."""
    return make_standin(tmp_path_factory.mktemp("data") / "standin-digits")


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
