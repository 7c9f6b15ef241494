"""decnn export: shards that load without the rest of the model, and ONNX graphs that reproduce the logits."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import timm
import torch
from conftest import randomize_

import decnn
from decnn.bench.shard_memory import measure
from decnn.common.checkpoint import save_checkpoint
from decnn.common.errors import ConfigError
from decnn.deploy.export import main as export_main
from decnn.deploy.shards import load_checkpoint_branch, load_shard_branch
from decnn.partition import Placement, run_branches_locally

SIZE = 32


def _checkpoint(path, name="decnn_resnet18", **kwargs):
    model = randomize_(timm.create_model(name, **kwargs))
    save_checkpoint(path, {"model": model.state_dict(), "model_name": name, "model_kwargs": kwargs,
                           "config": {"data": {"image_size": SIZE}}})
    return model


@pytest.fixture
def exported(onnx_export):
    return onnx_export


def test_shard_and_mapped_checkpoint_branches_equal_the_sliced_model(exported):
    model, tmp = exported
    placement = Placement.parse(4, "0,1/2,3")
    x = torch.randn(2, 3, SIZE, SIZE)
    for load, source in ((load_shard_branch, tmp / "shards"), (load_checkpoint_branch, tmp / "best.pt")):
        branches = [load(source, placement, d) for d in range(2)]
        with torch.inference_mode():
            assert (run_branches_locally(branches, x) - model(x)).abs().max() <= 1e-4


def test_onnx_branches_with_the_reference_exchange_equal_the_whole_model(exported):
    pytest.importorskip("onnxruntime")
    from decnn.deploy.onnx_branch import OnnxBranch

    model, tmp = exported
    files = json.loads((tmp / "shards" / "manifest.json").read_text())["onnx"]
    assert files[1] == [f"device1.seg{i}.onnx" for i in range(4)] + ["device1.head.onnx"]
    for batch, size in ((1, SIZE), (5, 40)):  # dynamic batch and image size
        x = torch.randn(batch, 3, size, size)
        out = run_branches_locally([OnnxBranch(tmp / "shards", d) for d in range(2)], x)
        with torch.inference_mode():
            reference = model(x)
        assert (out - reference).abs().max() <= 1e-4
        assert torch.equal(out.argmax(1), reference.argmax(1))


def test_split_with_the_onnxruntime_backend_equals_the_whole_model(exported):
    pytest.importorskip("onnxruntime")
    model, tmp = exported
    x = torch.randn(3, 3, SIZE, SIZE)
    with decnn.split(tmp / "shards", devices=2, backend="onnxruntime", overlap=2, threads=1) as split_model:
        out = split_model(x)
    with torch.inference_mode():
        assert (out - model(x)).abs().max() <= 1e-4
    with pytest.raises(ConfigError, match="needs a shard folder with ONNX graphs"):
        decnn.split(tmp / "best.pt", devices=2, backend="onnxruntime")


def test_export_rejects_a_bad_placement(exported, capsys):
    _, tmp = exported
    assert export_main([str(tmp / "best.pt"), "--placement", "0,1/1,2", "--out", str(tmp / "bad")]) == 2
    assert "each of the groups 0..3" in capsys.readouterr().err


def test_export_spreads_the_groups_over_any_device_count(tmp_path, capsys):
    _checkpoint(tmp_path / "best.pt", width=0.5)
    assert export_main([str(tmp_path / "best.pt"), "--devices", "3", "--out", str(tmp_path / "shards")]) == 0
    assert json.loads((tmp_path / "shards" / "manifest.json").read_text())["placement"] == [[0, 1], [2], [3]]
    assert export_main([str(tmp_path / "best.pt"), "--devices", "5", "--out", str(tmp_path / "bad")]) == 2
    assert "4 groups split over 1 to 4 devices, not 5" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_device_loading_its_shard_never_holds_the_whole_model(tmp_path):
    """Peak RSS of the load, in fresh processes: the whole model's weights would not fit under the bound."""
    model = _checkpoint(tmp_path / "best.pt", "decnn_resnet34")
    whole = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert export_main([str(tmp_path / "best.pt"), "--devices", "2", "--out", str(tmp_path / "shards")]) == 0
    hows = ("whole", "shard", "checkpoint")
    with ThreadPoolExecutor(len(hows)) as pool:  # one process each, side by side: peak RSS is per process
        rows = dict(zip(hows, pool.map(lambda how: measure(str(tmp_path / "best.pt"), str(tmp_path / "shards"), 1,
                                                           how), hows)))
    assert rows["whole"]["load_peak_bytes"] > 1.5 * whole  # the state dict and the model it fills
    assert rows["shard"]["load_peak_bytes"] < 0.8 * whole, rows["shard"]
    # The mapped checkpoint's pages of this device's rows and their copies: less than the whole-model build.
    assert rows["checkpoint"]["load_peak_bytes"] < min(1.6 * whole, rows["whole"]["load_peak_bytes"]), rows
    assert all(rows[how]["param_bytes"] < 0.55 * whole for how in rows)
