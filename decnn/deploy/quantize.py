"""Static int8 quantization of an exported shard folder's ONNX graphs, with ONNX Runtime's quantizer.

    decnn export best.pt --devices 2 --out shards/ --onnx --quantize int8 --calibration data/tiny-imagenet-200

Each device's segment graphs are quantized on their own (the shuffle points stay where they are), calibrated
on that device's real activations at that point: the fp32 graphs of all devices run over images of the
model's training split with the reference exchange, and every graph's inputs are recorded. The head (a
partial product of the FC whose outputs all devices sum) and device 0's tail stay fp32. Afterwards the
quantized split runs over the same images against the fp32 one; under ``min_agreement`` top-1 agreement the
export is refused and its manifest removed, so the folder no longer loads as a shard folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from decnn.common.meters import agreement
from decnn.deploy.onnx_branch import OnnxBranch
from decnn.deploy.shards import MANIFEST, meta_model
from decnn.partition import run_branches_locally

SCHEMES = ("int8",)
DEFAULT_IMAGES = 256
DEFAULT_MIN_AGREEMENT = 0.99
BATCH = 32  # calibration images per run of the graphs


class QuantizationRefused(ValueError):
    """The quantized split agrees with the fp32 one on fewer calibration images than required."""


@dataclass(frozen=True)
class Settings:
    """How onnxruntime.quantization quantizes a graph (chosen by measurement: see the README)."""

    quant_format: str = "QDQ"  # QDQ or QOperator
    per_channel: bool = True  # one weight scale per output channel
    activation_type: str = "QUInt8"  # u8 activations, s8 weights: the VNNI / AMX u8s8 kernels
    weight_type: str = "QInt8"
    calibrate_method: str = "MinMax"
    preprocess: bool = True  # quant_pre_process: symbolic shapes and graph optimisation first
    fp32_stem: bool = False  # keep the convolution on the image in fp32 (a common choice; measured as a variant)


def check_calibration(root: str | Path, count: int) -> None:
    """Fail before any export work on a calibration set that cannot be read (DatasetNotFoundError, ValueError)."""
    from decnn.data import dataset_class

    if count < 1:
        raise ValueError(f"--calibration-images {count}: give at least 1 (default {DEFAULT_IMAGES})")
    dataset_class(root)(root, split="train")


def calibration_images(root: str | Path, image_size: int, mean, std, count: int) -> tuple[torch.Tensor, list[int]]:
    """``count`` images of the training split, evenly spaced over it (every class when it is sorted by class),
    prepared as the trainer's evaluation prepares them; and their indices."""
    from decnn.data import dataset_class
    from decnn.train.transforms import eval_transform

    check_calibration(root, count)
    dataset = dataset_class(root)(root, split="train", transform=eval_transform(image_size, mean, std))
    count = min(count, len(dataset))
    indices = np.linspace(0, len(dataset) - 1, count).round().astype(int).tolist()
    return torch.stack([dataset[i][0] for i in indices]), indices


class _Recorder:
    """A branch that records the input of each of its segments (the quantizer's calibration data)."""

    def __init__(self, branch: OnnxBranch):
        self.branch, self.plans, self.segments = branch, branch.plans, branch.segments
        self.num_shuffles = branch.num_shuffles
        self.inputs: list[list[np.ndarray]] = [[] for _ in branch.segments]

    def segment(self, i: int, x: torch.Tensor) -> torch.Tensor:
        self.inputs[i].append(x.contiguous().numpy())
        return self.branch.segment(i, x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch.head(x)

    def finish(self, summed: torch.Tensor) -> torch.Tensor:
        return self.branch.finish(summed)


def run_split(branches, images: torch.Tensor) -> torch.Tensor:
    """The split's logits over ``images``, all devices in this process with the reference exchange."""
    with torch.inference_mode():
        return torch.cat([run_branches_locally(branches, x) for x in images.split(BATCH)])


def _reader(batches: list[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.rest = iter(batches)

        def get_next(self) -> dict | None:
            x = next(self.rest, None)
            return None if x is None else {"x": x}

    return Batches()


def quantize_graph(src: Path, dst: Path, batches: list[np.ndarray], settings: Settings, fp32_input_ops: bool) -> None:
    """``src`` quantized to ``dst``, activation ranges calibrated on ``batches`` of its input ``x``; with
    ``fp32_input_ops`` the operators reading ``x`` stay fp32."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        model = src
        if settings.preprocess:
            model = Path(tmp) / "pre.onnx"
            quant_pre_process(str(src), str(model))
        excluded = [n.name for n in onnx.load(str(model)).graph.node if fp32_input_ops and "x" in n.input]
        quantize_static(str(model), str(dst), _reader(batches), quant_format=QuantFormat[settings.quant_format],
                        per_channel=settings.per_channel, activation_type=QuantType[settings.activation_type],
                        weight_type=QuantType[settings.weight_type], nodes_to_exclude=excluded,
                        calibrate_method=CalibrationMethod[settings.calibrate_method])


def int8_name(name: str) -> str:
    return name.replace(".onnx", ".int8.onnx")


def quantize_shards(out: str | Path, manifest: dict, data_root: str | Path, num_images: int = DEFAULT_IMAGES,
                    min_agreement: float = DEFAULT_MIN_AGREEMENT, settings: Settings = Settings()) -> dict:
    """Quantize the fp32 graphs of the shard folder ``out`` (its ``manifest`` lists them under "onnx");
    returns the manifest listing the quantized graphs, written to ``out`` once they pass the guard.

    Raises :class:`QuantizationRefused` (and removes the manifest) when top-1 agreement with the fp32 split on
    the calibration images is under ``min_agreement``.
    """
    out = Path(out)
    fp32 = manifest["onnx"]
    devices = range(len(fp32))
    try:
        pretrained = meta_model(manifest["model_name"], manifest["model_kwargs"]).pretrained_cfg
        images, indices = calibration_images(data_root, manifest["image_size"], pretrained["mean"],
                                             pretrained["std"], num_images)
        recorders = [_Recorder(OnnxBranch(out, d)) for d in devices]
        reference = run_split(recorders, images)
        int8 = [[int8_name(n) if ".seg" in n else n for n in names] for names in fp32]
        for d in devices:
            for i, batches in enumerate(recorders[d].inputs):
                quantize_graph(out / fp32[d][i], out / int8[d][i], batches, settings, settings.fp32_stem and i == 0)
        del recorders
        quantized = run_split([OnnxBranch(out, d, graphs=int8[d]) for d in devices], images)
        measured = agreement(quantized, reference)
        if measured["top1_agreement"] < min_agreement:
            raise QuantizationRefused(
                f"int8 quantization agrees with fp32 on top-1 for {measured['top1_agreement']:.2%} of the "
                f"{len(images)} calibration images (max |dlogit| {measured['max_abs_diff']:.3g}), under "
                f"--min-agreement {min_agreement:g}; the folder {out} is no export now. Calibrate on more "
                f"images (--calibration-images), or lower --min-agreement to accept it")
    except BaseException:
        (out / MANIFEST).unlink(missing_ok=True)  # a half-quantized folder must not load as an export
        raise
    manifest = {**manifest, "onnx": int8, "quantization": {
        "scheme": "int8", "method": "onnxruntime.quantization.quantize_static", **asdict(settings),
        "fp32_graphs": "head and tail (each device's partial FC product, summed over devices in fp32)"
                       + (", the stem's convolution" if settings.fp32_stem else ""),
        "fp32_onnx": fp32,
        "calibration": {"root": str(data_root), "split": "train", "images": len(indices),
                        "selection": "evenly spaced indices"},
        "min_agreement": min_agreement, "agreement": measured}}
    _write_atomically(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def summary(manifest: dict) -> str:
    """One line: the quantization's agreement with fp32 and the graphs each device runs."""
    q = manifest["quantization"]
    graphs = "; ".join(f"device {d}: {', '.join(names)}" for d, names in enumerate(manifest["onnx"]))
    return (f"{q['scheme']}: top-1 agreement with fp32 {q['agreement']['top1_agreement']:.2%} on "
            f"{q['calibration']['images']} calibration images (max |dlogit| {q['agreement']['max_abs_diff']:.3g}, "
            f"--min-agreement {q['min_agreement']:g}); {graphs}")


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
