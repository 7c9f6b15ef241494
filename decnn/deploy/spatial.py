"""A spatial split's export for devices without torch (``decnn export --mode modnn|grid --onnx``).

The manifest holds the model's layout for the export's image size (its pieces and the maps they read,
:class:`decnn.wire.spatial.Layout`), from which each device derives its own program for whatever tiling it runs
(``decnn edge DIR --devices N``); every piece is one ONNX graph for any tile size (``piece<i>.onnx``); every
device pools its tile of the features with ``pool.onnx`` and device 0 runs ``classifier.onnx`` on the sum;
``model.onnx`` is the whole model (the 1-device baseline and the reference of ``--verify``). Every device
holds all the weights: the method's memory cost.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import timm
import torch
from torch import nn

from decnn.common.checkpoint import load_checkpoint, load_weights
from decnn.deploy.onnx_graph import export_graph
from decnn.partition.spatial import spatial_model
from decnn.wire.export_format import FORMAT, MANIFEST, WHOLE_MODEL
from decnn.wire.spatial import Tiling, compile_programs

POOL, CLASSIFIER = "pool.onnx", "classifier.onnx"


def export_spatial(checkpoint: str | Path, tiling: Tiling, out: str | Path, image_size: int | None = None) -> dict:
    """Write every device's program and graphs for ``tiling`` into ``out``; returns the manifest."""
    ckpt = load_checkpoint(checkpoint)
    model = timm.create_model(ckpt["model_name"], **ckpt["model_kwargs"])
    load_weights(model, ckpt["model"], where=str(checkpoint))
    model.eval()
    size = image_size or ckpt["config"]["data"]["image_size"]
    spatial = spatial_model(model)
    layout = spatial.layout((size, size))
    programs = compile_programs(layout, tiling)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = {"format": FORMAT, "export_id": uuid.uuid4().hex, "model_name": ckpt["model_name"],
             "model_kwargs": ckpt["model_kwargs"], "mode": tiling.mode, "tiling": tiling.describe(),
             "speeds": list(tiling.row_weights) if tiling.mode == "modnn" else None, "image_size": size}
    pieces = [f"piece{i}.onnx" for i in range(len(spatial.pieces))]
    for name, piece, step in zip(pieces, spatial.pieces, programs[0].steps):
        shapes = [(layout.shapes[i.tensor][0], i.region.rows, i.region.cols) for i in step.inputs]
        export_graph(piece, tuple(torch.zeros(1, *shape) for shape in shapes), out / name, image_dims=True)
    c, h, w = layout.shapes[layout.features]
    export_graph(spatial.pool, (torch.zeros(1, c, h, w),), out / POOL, image_dims=False)
    with torch.no_grad():
        pooled = spatial.pool(torch.zeros(1, c, h, w))
    export_graph(spatial.classifier, (pooled,), out / CLASSIFIER, image_dims=False)
    export_graph(model, (torch.zeros(1, 3, size, size),), out / WHOLE_MODEL, image_dims=True)
    held = _param_bytes(nn.ModuleList([*spatial.pieces, spatial.pool, spatial.classifier]))
    cfg = model.pretrained_cfg
    manifest = {**stamp, "source": str(checkpoint), "groups": model.groups, "width": model.width,
                "stem": model.stem_kind, "num_classes": model.num_classes, "mean": list(cfg["mean"]),
                "std": list(cfg["std"]), "exchanges": programs[0].exchanges,
                "devices": [{"param_bytes": held}] * tiling.devices, "layout": layout.to_dict(),
                "graphs": {"pieces": pieces, "pool": POOL, "classifier": CLASSIFIER}}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())
