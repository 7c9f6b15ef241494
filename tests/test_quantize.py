"""decnn export --quantize int8: int8 graphs per device, calibrated on the stand-in, guarded by their agreement."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import randomize_

import decnn
from decnn.common.checkpoint import save_checkpoint
from decnn.deploy.export import main as export_main
from decnn.deploy.onnx_branch import OnnxBranch
from decnn.deploy.quantize import QuantizationRefused, quantize_shards, summary
from decnn.deploy.shards import ShardError, read_manifest
from decnn.inference.inputs import Normalize, ValImages
from decnn.inference.settings import ConfigError
from decnn.jobs.infer import main as infer_main
from decnn.partition import run_branches_locally

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
CALIBRATION = 64
BOUND = 0.9  # top-1 agreement of the int8 split with fp32 on stand-in images (a random model: near-ties)


def _checkpoint(path):
    model = randomize_(timm.create_model("decnn_resnet18", width=0.5, num_classes=10))
    save_checkpoint(path, {"model": model.state_dict(), "model_name": "decnn_resnet18",
                           "model_kwargs": {"width": 0.5, "num_classes": 10}, "config": {"data": {"image_size": SIZE}}})
    return model


def _export(tmp, standin, *extra):
    return export_main([str(tmp / "best.pt"), "--devices", "2", "--out", str(tmp / "shards"), "--onnx",
                        "--quantize", "int8", "--calibration", str(standin), "--calibration-images",
                        str(CALIBRATION), *extra])


def _quantize(onnx_export, tmp: Path, standin, images: int, min_agreement: float) -> dict:
    """The shared fp32 export (the model of :func:`_checkpoint`), copied into ``tmp`` and quantized there."""
    shutil.copytree(onnx_export[1] / "shards", tmp / "shards")
    return quantize_shards(tmp / "shards", read_manifest(tmp / "shards"), standin, images, min_agreement)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, standin, onnx_export):
    tmp = tmp_path_factory.mktemp("quantized")
    manifest = _quantize(onnx_export, tmp, standin, CALIBRATION, BOUND)
    return onnx_export[0], tmp / "shards", summary(manifest)


def _val(standin, model, count=64):
    images, _ = ValImages(standin, count, SIZE).batch(0, count)
    return Normalize(model.pretrained_cfg["mean"], model.pretrained_cfg["std"], torch.device("cpu"))(images)


def test_the_manifest_lists_int8_segments_and_records_the_calibration_and_agreement(quantized, standin):
    _, shards, printed = quantized
    manifest = read_manifest(shards)
    q = manifest["quantization"]
    assert f"top-1 agreement with fp32 {q['agreement']['top1_agreement']:.2%} on {CALIBRATION} calibration" in printed
    assert manifest["onnx"] == [[name.replace(".onnx", ".int8.onnx") if ".seg" in name
                                 else name for name in names] for names in q["fp32_onnx"]]
    assert manifest["onnx"][0][-2:] == ["device0.head.onnx", "device0.tail.onnx"]  # the partial logits stay fp32
    assert q["calibration"] == {"root": str(standin), "split": "train", "images": CALIBRATION,
                                "selection": "evenly spaced indices"}
    assert q["min_agreement"] == BOUND and q["agreement"]["top1_agreement"] >= BOUND
    for int8, fp32 in zip(manifest["onnx"], q["fp32_onnx"]):
        int8_bytes = sum((shards / n).stat().st_size for n in int8 if ".seg" in n)
        fp32_bytes = sum((shards / n).stat().st_size for n in fp32 if ".seg" in n)
        assert int8_bytes < 0.4 * fp32_bytes  # int8 weights: a quarter, plus scales, zero points and the graph


def test_the_int8_split_with_the_reference_exchange_agrees_with_the_fp32_whole_model(quantized, standin):
    model, shards, _ = quantized
    x = _val(standin, model)
    out = run_branches_locally([OnnxBranch(shards, d) for d in range(2)], x)
    with torch.inference_mode():
        reference = model(x)
    diff = (out - reference).abs().max().item()
    assert 1e-4 < diff <= 0.05 * reference.abs().max().item()  # quantized (not fp32), and close
    assert (out.argmax(1) == reference.argmax(1)).float().mean().item() >= BOUND


def test_the_split_runs_quantized_shards_and_verify_reports_their_distance_from_fp32(quantized, standin, tmp_path):
    model, shards, _ = quantized
    report = tmp_path / "report.json"
    assert infer_main(["--checkpoint", str(shards), "--backend", "onnxruntime", "--devices", "2", "--data-root",
                       str(standin), "--num-images", "32", "--batch", "8", "--warmup", "0", "--threads", "1",
                       "--verify", "--out", str(report), "--log-dir", ""]) == 0
    r = json.loads(report.read_text())
    # Two processes exchanging through torch.distributed report what the int8 graphs give in one process.
    x = _val(standin, model, 32)
    local = run_branches_locally([OnnxBranch(shards, d) for d in range(2)], x)
    with torch.inference_mode():
        reference = model(x)
    assert r["max_abs_diff"] == pytest.approx((local - reference).abs().max().item(), abs=1e-4)
    assert r["max_abs_diff"] > 1e-4 and r["top1_agreement"] >= BOUND


def test_a_quantization_under_the_threshold_is_refused_and_the_folder_no_longer_loads(tmp_path, standin,
                                                                                        onnx_export):
    with pytest.raises(QuantizationRefused) as refused:
        _quantize(onnx_export, tmp_path, standin, 16, 1.01)
    assert str(refused.value).startswith("int8 quantization agrees with fp32 on top-1 for ")
    assert "of the 16 calibration images" in str(refused.value) and "--min-agreement 1.01" in str(refused.value)
    with pytest.raises(ShardError):
        read_manifest(tmp_path / "shards")
    with pytest.raises(ConfigError):
        decnn.split(tmp_path / "shards", devices=2, backend="onnxruntime")


@pytest.mark.slow
def test_the_command_line_exports_quantizes_and_refuses_in_one_line(tmp_path, standin, capsys):
    _checkpoint(tmp_path / "best.pt")
    assert _export(tmp_path, standin, "--min-agreement", "1.01", "--calibration-images", "16") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: int8 quantization agrees with fp32 on top-1 for ")
    assert not (tmp_path / "shards" / "manifest.json").exists()


def test_quantize_needs_onnx_and_readable_calibration_images(tmp_path, standin, capsys):
    _checkpoint(tmp_path / "best.pt")
    assert export_main([str(tmp_path / "best.pt"), "--devices", "2", "--out", str(tmp_path / "s"), "--quantize",
                        "int8"]) == 2
    assert "add --onnx and --calibration DATA_ROOT" in capsys.readouterr().err
    for bad, message in ((["--calibration", str(tmp_path / "nowhere")], "nowhere"),
                         (["--calibration", str(standin), "--calibration-images", "0"], "give at least 1")):
        assert export_main([str(tmp_path / "best.pt"), "--devices", "2", "--out", str(tmp_path / "s"), "--onnx",
                            "--quantize", "int8", *bad]) == 2
        err = capsys.readouterr().err  # a missing dataset's error goes on to show the layouts it reads
        assert err.startswith("error: ") and message in err.splitlines()[0]
    assert not (tmp_path / "s").exists()  # checked before anything is written


@pytest.mark.slow
def test_the_benchmark_runs_and_reports_each_variant(standin, tmp_path):
    """In its own process, as users run it (it pins itself to one core and thread)."""
    from decnn.bench.quantized import VARIANTS

    _checkpoint(tmp_path / "best.pt")
    out = tmp_path / "quantized.json"
    args = ["--data-root", str(standin), "--checkpoint", str(tmp_path / "best.pt"), "--model", "decnn_resnet18",
            "--model-kwargs", '{"width": 0.5, "num_classes": 10}', "--image-size", str(SIZE), "--rounds", "1",
            "--iters", "1", "--calibration-images", "16", "--val-images", "16", "--out", str(out)]
    subprocess.run([sys.executable, "-m", "decnn.bench.quantized", *args], cwd=ROOT, check=True, capture_output=True)
    r = json.loads(out.read_text())
    names = ["fp32", *VARIANTS]
    assert sorted((row["variant"], row["batch"]) for row in r["rows"]) == sorted((n, b) for n in names for b in (1, 8))
    assert all(r["size"][n] < 0.35 * r["size"]["fp32"] for n in VARIANTS)
    assert "QLinearConv" in r["kernels_ms"]["int8"] and "QLinearConv" not in r["kernels_ms"]["fp32"]
    assert r["memory"]["int8"]["load_and_run_bytes"] > 0
    assert set(r["random_init"]["rows"]) == set(names) and set(r["trained"]["rows"]) == {"fp32", "int8"}
