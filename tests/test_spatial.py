"""The peers' spatial splits (MoDNN's row bands, Coates et al.'s tiles): every tiling of every model equals the
whole model, in one process, in the PyTorch runtime and in the device runtime; what crosses is counted."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import randomize_

from decnn.common.checkpoint import save_checkpoint
from decnn.deploy.export import main as export_main
from decnn.inference.settings import InferConfig
from decnn.inference.spec import resolve_model
from decnn.partition.spatial import run_spatial_locally, spatial_model
from decnn.plan.spatial import time_spatial
from decnn.wire.spatial import Layout, SpatialError, Tiling, compile_programs

# (name, kwargs, image size): plain ResNet-18 (tiny stem), plain ResNet-50 (7x7/2 stem and max-pool) and VGG-16 at
# sizes that halve unevenly, and a DeCNN model (groups and shuffles: a spatial split cuts them too).
MODELS = {
    "resnet18": ("decnn_resnet18", {"groups": 1, "width": 0.25}, 33),
    "resnet50": ("decnn_resnet50", {"groups": 1, "width": 0.25, "stem": "imagenet"}, 97),
    "vgg16": ("decnn_vgg16_bn", {"groups": 1, "width": 0.25, "stem_width": 16, "num_features": 32,
                                 "mlp_hidden": 32}, 131),
    "decnn34": ("decnn_resnet34", {"groups": 4, "width": 0.5}, 37),
}
TILINGS = [("modnn", 2), ("modnn", 3), ("modnn", 4), ("grid", 4)]


@pytest.fixture(scope="module")
def models():
    out = {}
    for key, (name, kwargs, size) in MODELS.items():
        model = randomize_(timm.create_model(name, num_classes=10, **kwargs))
        out[key] = (model, spatial_model(model), size)
    return out


@pytest.mark.parametrize(("mode", "devices"), TILINGS)
@pytest.mark.parametrize("key", MODELS)
def test_every_tiling_equals_the_whole_model(models, key, mode, devices):
    model, spatial, size = models[key]
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(devices))
    with torch.inference_mode():
        expected = model(x)
    logits = run_spatial_locally(spatial, x, Tiling.for_mode(mode, devices))
    assert (logits - expected).abs().max() <= 1e-4
    assert torch.equal(logits.argmax(1), expected.argmax(1))
    one = run_spatial_locally(spatial, x[:1], Tiling.for_mode(mode, devices))  # batch 1
    assert (one - expected[:1]).abs().max() <= 1e-4


def test_resnet50_at_224_exchanges_before_every_windowed_layer_and_only_halos():
    """MoDNN exchanges before the max-pool and the 16 3x3 convolutions (the stem reads the image, which every
    device holds): 17 times per image, where DeCNN exchanges at its 3 shuffle points. A 3x3 convolution of
    stride 1 over 2 row bands moves one row of its input each way."""
    with torch.device("meta"):
        model = timm.create_model("decnn_resnet50", groups=1, width=1.0, stem="imagenet", num_classes=1000).eval()
    layout = spatial_model(model).layout((224, 224))
    assert len(layout.pieces) == 18
    programs = compile_programs(layout, Tiling.for_mode("modnn", 2))
    assert programs[0].exchanges == 17 and len(model.shuffles) == 3  # DeCNN: an all-to-all at each shuffle
    assert [any(p.steps[s].exchanges for p in programs) for s in range(18)] == [False] + [True] * 17
    step = 2  # layer1's first 3x3 convolution: 64 channels of 56x56
    sent = [sum(x.part.rows * x.part.cols * layout.shapes[x.tensor][0] * 4 for x in p.steps[step].sends)
            for p in programs]
    assert sent == [56 * 64 * 4, 56 * 64 * 4]
    grid = compile_programs(layout, Tiling.for_mode("grid", 4))
    assert sorted(r.src for i in grid[0].steps[step].inputs for r in i.receives) == [1, 2, 3]  # a corner too


def test_bands_follow_the_devices_speeds_and_grids_are_squarest():
    tiles = Tiling.for_mode("modnn", 2, [3.0, 1.0]).tiles(64, 64)
    assert [(t.rows, t.cols) for t in tiles] == [(48, 64), (16, 64)]
    assert [(Tiling.for_mode("grid", n).rows, Tiling.for_mode("grid", n).cols) for n in (4, 6, 8, 9)] == \
        [(2, 2), (3, 2), (4, 2), (3, 3)]


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Tiling.for_mode("grid", 2), "with 2 devices use modnn"),
    (lambda: Tiling.for_mode("grid", 4, [1, 2, 1, 1]), "for devices of unequal speed use modnn"),
    (lambda: Tiling.for_mode("modnn", 2, [1.0]), "one positive relative speed per device"),
    (lambda: Tiling.for_mode("modnn", 3).tiles(2, 8), "a 2x8 feature map cannot give each of 3 row bands"),
])
def test_tilings_that_cannot_be_cut_say_what_would_work(make, message):
    with pytest.raises(SpatialError, match=message):
        make()


def test_a_head_that_is_not_linear_is_refused():
    model = timm.create_model("decnn_vgg16_bn", groups=1, width=0.25, stem_width=16, num_features=32, mlp_hidden=32,
                              global_pool="max")
    with pytest.raises(SpatialError, match="not linear"):
        spatial_model(model.eval())


def test_the_layout_travels_as_json(models):
    _, spatial, size = models["resnet50"]
    layout = spatial.layout((size, size))
    assert Layout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout


def _spec():
    return resolve_model(InferConfig(random_init=True, model="decnn_resnet18", groups=1, width=0.25))


def _infer(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = tmp / "report.json"
    run = subprocess.run([sys.executable, "-m", "decnn.jobs.infer", "--random-init", "--log-dir", "", "--out", str(out),
                          *args], capture_output=True, text=True, timeout=300)
    return run, json.loads(out.read_text()) if run.returncode == 0 else None


# modnn on 3 devices: in-process above, in the device runtime below; grid-4 takes the PyTorch runtime's path fast
@pytest.mark.parametrize(("mode", "devices"), [pytest.param("modnn", 3, marks=pytest.mark.slow), ("grid", 4)])
def test_the_pytorch_runtime_equals_the_whole_model(tmp_path, mode, devices):
    run, record = _infer(tmp_path, "--mode", mode, "--devices", str(devices), "--model", "decnn_resnet18",
                         "--groups", "1", "--width", "0.25", "--image-size", "33", "--batch", "3", "--num-images",
                         "6", "--warmup", "1", "--verify")
    assert run.returncode == 0, run.stderr
    assert record["mode"] == mode and record["devices"] == devices
    assert record["max_abs_diff"] <= 1e-4 and record["top1_agreement"] == 1.0
    assert record["exchanges_per_batch"] == 16  # 16 3x3 convolutions after the stem
    whole = record["params_per_rank"][0]
    assert record["params_per_rank"] == [whole] * devices  # every device holds every weight
    # Per batch: the images' broadcast, one all-to-all of halos per exchange, the pooled tiles' reduce.
    assert all(c == {"broadcast": 1, "all_to_all": 16, "reduce": 1} for c in record["collectives_per_batch"])
    _, halos, _ = time_spatial(_spec(), batch=3, image_size=33, devices=devices, rank=0, repeats=0)
    sent = [sum(map(sum, step)) / 3 for step in halos[mode] if sum(map(sum, step))]
    assert record["bytes_per_image_per_point"] == pytest.approx(sent)  # what the cost model counts, the run sends


@pytest.mark.parametrize(("args", "message"), [
    (["--mode", "grid", "--devices", "2"], "a grid needs a device count that factors"),
    (["--mode", "modnn", "--devices", "2", "--overlap", "2"], "--overlap applies to modes branch"),
    (["--mode", "branch", "--devices", "2", "--speeds", "1,2"], "--speeds applies to mode modnn"),
    (["--mode", "modnn", "--devices", "3", "--model", "decnn_resnet18", "--groups", "1", "--width", "0.25",
      "--image-size", "16"], "cannot split decnn_resnet18 at 16x16: a 2x2 feature map cannot give each of 3"),
])
def test_usage_errors_are_one_line_and_exit_2(tmp_path, args, message):
    run, _ = _infer(tmp_path, *args)
    assert run.returncode == 2 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


@pytest.fixture(scope="module")
def spatial_export(tmp_path_factory):
    """Plain ResNet-18 x0.25 at 33x33, one block a stage, exported as a modnn split for devices without torch, and 6
    images."""
    tmp = tmp_path_factory.mktemp("spatial")
    kwargs = {"groups": 1, "width": 0.25, "num_classes": 10, "layers": (1, 1, 1, 1)}
    model = randomize_(timm.create_model("decnn_resnet18", **kwargs))
    save_checkpoint(tmp / "best.pt", {"model": model.state_dict(), "model_name": "decnn_resnet18",
                                      "model_kwargs": kwargs, "config": {"data": {"image_size": 33}}})
    assert export_main([str(tmp / "best.pt"), "--mode", "modnn", "--devices", "2", "--out", str(tmp / "modnn"),
                        "--onnx"]) == 0
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 33, 33), dtype=np.uint8)
    np.savez(tmp / "inputs.npz", images=images)
    return model, tmp


@pytest.mark.parametrize("args", [["--devices", "2"], ["--devices", "3"], ["--devices", "4", "--mode", "grid"]])
def test_the_device_runtime_equals_the_whole_model(spatial_export, args):
    model, tmp = spatial_export
    out = tmp / "-".join(args)
    run = subprocess.run([sys.executable, "-m", "decnn.edge.launch", str(tmp / "modnn"), *args, "--inputs",
                          str(tmp / "inputs.npz"), "--batch", "3", "--warmup", "1", "--verify", "--logits",
                          f"{out}.npy", "--out", f"{out}.json"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    images = torch.from_numpy(np.load(tmp / "inputs.npz")["images"])
    mean, std = (torch.tensor(model.pretrained_cfg[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.inference_mode():
        expected = model((images / 255 - mean) / std)
    logits = torch.from_numpy(np.load(f"{out}.npy"))
    assert (logits - expected).abs().max() <= 1e-4 and torch.equal(logits.argmax(1), expected.argmax(1))
    record = json.loads(Path(f"{out}.json").read_text())
    assert record["mode"] == (args[-1] if "--mode" in args else "modnn") and record["devices"] == int(args[1])
    assert record["exchanges_per_batch"] == 8 and record["max_abs_diff"] <= 1e-4  # the 8 3x3 convolutions


def test_the_device_runtime_refuses_what_it_cannot_cut(spatial_export):
    _, tmp = spatial_export
    run = subprocess.run([sys.executable, "-m", "decnn.edge.launch", str(tmp / "modnn"), "--devices", "3", "--mode",
                          "grid"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "a grid needs a device count that factors" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_the_profile_times_every_step_of_every_mode_the_devices_allow():
    seconds, halos, pooled = time_spatial(_spec(), batch=1, image_size=33, devices=4, rank=1, repeats=1)
    assert sorted(seconds) == ["grid", "modnn"] and len(seconds["modnn"]) == 17 + 1  # 17 pieces, the head
    assert all(t > 0 for t in seconds["modnn"]) and pooled == 128 * 4  # ResNet-18 x0.25: 128 features of fp32
    assert len(halos["grid"]) == 17 and sum(map(sum, halos["grid"][0])) == 0  # the stem reads the image
