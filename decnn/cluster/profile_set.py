"""The graphs a board times for ``decnn plan --hosts``: for every k = 1..G the branch that a device holding k groups
runs (device 0 of the placement [0..k-1]/[k..G-1], its segments, head and tail), each an export folder of its own
(``k<k>/``: manifest, plans, graphs), and what the model moves at its shuffles.

The graphs have the checkpoint's structure and random weights: the time a graph takes does not depend on its
weights' values, and a board never holds weights that it will not run.
"""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch

from decnn.cluster.placement import Traffic
from decnn.common.checkpoint import load_checkpoint, save_checkpoint
from decnn.deploy.export import export_device_onnx
from decnn.deploy.shards import export_shards, shard_file
from decnn.partition import Placement
from decnn.wire.export_format import MANIFEST


def export_profile_set(checkpoint: str | Path, out: Path) -> tuple[int, Traffic]:
    """Write ``out/k1`` .. ``out/kG`` for the model of ``checkpoint``; its group count and traffic."""
    ckpt = load_checkpoint(checkpoint)
    name, kwargs, size = ckpt["model_name"], ckpt["model_kwargs"], ckpt["config"]["data"]["image_size"]
    del ckpt
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    out.mkdir(parents=True, exist_ok=True)
    random = out / "random.pt"
    save_checkpoint(random, {"model": model.state_dict(), "model_name": name, "model_kwargs": kwargs,
                             "config": {"data": {"image_size": size}}})
    groups = model.groups
    for k in range(1, groups + 1):
        held = (tuple(range(k)), *((tuple(range(k, groups)),) if k < groups else ()))
        placement = Placement(groups, held)
        folder = out / f"k{k}"
        manifest = export_shards(random, placement, folder)
        manifest["onnx"] = [export_device_onnx(folder, placement, 0, size)] + [[]] * (placement.num_devices - 1)
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        for d in range(placement.num_devices):
            shard_file(folder, d).unlink()
    random.unlink()
    return groups, traffic(model, size)


def traffic(model: torch.nn.Module, image_size: int) -> Traffic:
    """Each shuffle's permutation and pixels, and the input's and logits' bytes per image."""
    pixels = []
    with torch.inference_mode():
        y = model.stem(torch.zeros(1, 3, image_size, image_size))
        for segment in model.segments[:-1]:
            y = segment(y)
            pixels.append(y.shape[2] * y.shape[3])
    return Traffic([s.permutation.tolist() for s in model.shuffles], pixels, 3 * image_size**2,
                   4 * model.num_classes)
