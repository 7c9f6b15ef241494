"""Checkpoints: atomic saves, safe loads, rebuilding the model, and clear errors for the wrong one."""

import random

import numpy as np
import pytest
import timm
import torch

from decnn.common.checkpoint import (
    CheckpointError,
    check_architecture,
    load_checkpoint,
    load_model,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

KWARGS = {"num_classes": 10, "groups": 2, "width": 0.25, "stem": "tiny"}


def checkpoint(name="decnn_resnet18", **kwargs) -> dict:
    kwargs = {**KWARGS, **kwargs}
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)
    return {"model": model.state_dict(), "model_name": name, "model_kwargs": kwargs, "epoch": 3, "rng": [rng_state()]}


def test_save_load_round_trip(tmp_path):
    state = checkpoint()
    save_checkpoint(tmp_path / "last.pt", state)
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert loaded.keys() == state.keys() and loaded["epoch"] == 3
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, checkpoint())
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017  (whatever torch.save raises for an unpicklable object)
        save_checkpoint(path, {**checkpoint(), "bad": lambda: None})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_load_model_rebuilds_the_same_model(tmp_path):
    state = checkpoint()
    save_checkpoint(tmp_path / "m.pt", state)
    model, ckpt = load_model(tmp_path / "m.pt", expected_name="decnn_resnet18")
    reference = timm.create_model("decnn_resnet18", **KWARGS).eval()
    reference.load_state_dict(state["model"])
    x = torch.randn(2, 3, 32, 32)
    assert not model.training and ckpt["epoch"] == 3
    assert torch.equal(model(x), reference(x))


def test_other_architecture_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path / "m.pt", checkpoint("decnn_resnet18"))
    with pytest.raises(ValueError, match="holds a decnn_resnet18 model, but the config asks for decnn_resnet34"):
        load_model(tmp_path / "m.pt", expected_name="decnn_resnet34")
    ckpt = load_checkpoint(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="groups: 2 in checkpoint, 4 in config"):
        check_architecture(ckpt, "decnn_resnet18", {**KWARGS, "groups": 4})


def test_weights_that_do_not_fit_name_the_keys(tmp_path):
    state = checkpoint()
    state["model_kwargs"] = {**KWARGS, "width": 0.5}  # claims another width than its weights have
    save_checkpoint(tmp_path / "m.pt", state)
    with pytest.raises(CheckpointError, match=r"does not fit the model \(other shape: fc.weight, segments"):
        load_model(tmp_path / "m.pt")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"not a decnn checkpoint \(missing model, model_name, model_kwargs\)"):
        load_checkpoint(tmp_path / "other.pt")


def test_arbitrary_objects_are_refused(tmp_path):
    torch.save({**checkpoint(), "object": random.Random()}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="refuses to load"):
        load_checkpoint(tmp_path / "unsafe.pt")


def test_rng_state_round_trip(tmp_path):
    save_checkpoint(tmp_path / "r.pt", {**checkpoint(), "rng": [rng_state()]})
    draws = random.random(), np.random.rand(), torch.rand(3)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"][0])
    again = random.random(), np.random.rand(), torch.rand(3)
    assert draws[:2] == again[:2] and torch.equal(draws[2], again[2])
