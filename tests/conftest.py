"""Shared test helpers."""

import fcntl
import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import decnn  # noqa: F401  (registers the models with timm)
from decnn.data import make_standin

# decnn.distributed.launcher.launch starts its processes with "forkserver": have the server import decnn
# (torch, timm) once, so that the processes the tests launch fork ready instead of importing it afresh, seconds
# each time.
multiprocessing.set_forkserver_preload(["decnn"])

# Small enough for fast tests: the VGG's default MLP alone holds 120M parameters.
SMALL_VGG = {"stem_width": 32, "num_features": 64, "mlp_hidden": 64}


def small_kwargs(name: str) -> dict:
    """Arguments that shrink model ``name`` beyond ``width`` (the VGG's fixed-size stem and head)."""
    return dict(SMALL_VGG) if "vgg" in name else {}


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and batch-norm statistics: the init (identical BN scales, zero statistics) would hide
    permutation bugs. Weights are scaled by 1/sqrt(fan-in) so that deep models keep logits of order 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 25
            p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def made_once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """The folder ``name`` that ``make(folder)`` fills once per test run, shared by pytest-xdist's workers (each
    of which has sessions of its own): the first to come makes it, under a lock, the others wait and reuse it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above every worker's
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            folder.mkdir(exist_ok=True)
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def standin(tmp_path_factory):
    """The offline stand-in dataset, made once for the whole run; a test that damages data uses a copy."""
    data = made_once(tmp_path_factory, "data", lambda folder: make_standin(folder / "standin-digits"))
    return data / "standin-digits"


@pytest.fixture(autouse=True)
def _cores_and_threads_are_given_back():
    """A test (or the code it calls in this process) that pins pytest to a core or changes its thread count
    fails: every later test, and every process it starts, would run on what was left."""
    before = os.sched_getaffinity(0), torch.get_num_threads()
    yield
    assert (os.sched_getaffinity(0), torch.get_num_threads()) == before, "cores or threads not given back"


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory):
    """DeCNN ResNet-18 G4 x0.5, one block a stage (10 classes, 32x32, random weights): its checkpoint
    ``best.pt``, exported with ``--onnx`` for 2 devices (0,1/2,3) into ``shards/``, and 8 labelled uint8 images in
    ``inputs.npz``. An export costs seconds of tracing per graph: the tests of the export and of both ONNX
    runtimes share one."""
    import numpy as np
    import timm

    from decnn.common.checkpoint import save_checkpoint
    from decnn.deploy.export import main as export_main

    kwargs = {"width": 0.5, "num_classes": 10, "layers": (1, 1, 1, 1)}
    model = randomize_(timm.create_model("decnn_resnet18", **kwargs))  # seeded: the same in every worker

    def export(tmp: Path) -> None:
        save_checkpoint(tmp / "best.pt", {"model": model.state_dict(), "model_name": "decnn_resnet18",
                                          "model_kwargs": kwargs, "config": {"data": {"image_size": 32}}})
        assert export_main([str(tmp / "best.pt"), "--placement", "0,1/2,3", "--out", str(tmp / "shards"),
                            "--onnx"]) == 0
        images = np.random.default_rng(0).integers(0, 256, (8, 3, 32, 32), dtype=np.uint8)
        np.savez(tmp / "inputs.npz", images=images, labels=np.arange(8) % 10)

    return model, made_once(tmp_path_factory, "onnx-export", export)
