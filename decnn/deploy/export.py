"""``decnn export``: a checkpoint as per-device shards, and optionally each device's branch as ONNX graphs.

    decnn export runs/train/<run>/best.pt --placement 0,1/2,3 --out shards/
    decnn export runs/train/<run>/best.pt --devices 2 --out shards/ --onnx

Shards (``device<d>.pt``) are what ``decnn.split("shards/", ...)`` and ``infer_distributed.py --checkpoint
shards/`` load. With ``--onnx`` each device also gets ``device<d>.seg<i>.onnx`` (segment i; segment 0 starts
with the stem) and ``device<d>.head.onnx`` (its partial logits): between segments, the activations are
exchanged with the plans in the device's shard, and the partial logits of all devices are summed; device 0's
``device0.tail.onnx`` turns that sum into the logits; ``model.onnx`` is the whole model. A device that runs
without torch (``decnn edge``) needs only ``manifest.json``, its ``device<d>.plans.json`` and its graphs.
``--quantize int8`` then quantizes each device's segments (``device<d>.seg<i>.int8.onnx``, see
``decnn.deploy.quantize``) and lists those for the devices to run. ``--mode modnn|grid --onnx`` exports the
peers' spatial splits instead, for ``decnn edge`` (see ``decnn.deploy.spatial``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from decnn.common.checkpoint import CheckpointError, load_checkpoint, load_weights
from decnn.deploy.onnx_graph import export_graph
from decnn.deploy.quantize import (
    DEFAULT_IMAGES,
    DEFAULT_MIN_AGREEMENT,
    SCHEMES,
    check_calibration,
    quantize_shards,
    summary,
)
from decnn.deploy.shards import ShardError, export_shards, load_shard_branch, meta_model
from decnn.deploy.spatial import export_spatial
from decnn.partition import Branch, Placement
from decnn.wire.export_format import MANIFEST, WHOLE_MODEL
from decnn.wire.spatial import SPATIAL_MODES, Tiling

EXAMPLES = """examples:
  decnn export runs/train/<run>/best.pt --placement 0,1/2,3 --out shards/
  decnn export runs/train/<run>/best.pt --devices 2 --out shards/ --onnx
  decnn export runs/train/<run>/best.pt --devices 2 --out shards/ --onnx --quantize int8 --calibration DATA_ROOT
  decnn export runs/train/<run>/best.pt --mode modnn --devices 2 --out modnn/ --onnx
  decnn export runs/train/<run>/best.pt --mode grid --devices 4 --out grid/ --onnx --image-size 224
"""


class _Step(nn.Module):
    """One step of a branch (``segment`` i, ``head`` or device 0's ``finish``) as a module torch.onnx exports."""

    def __init__(self, branch: Branch, method: str, *args: int):
        super().__init__()
        self.branch, self.method, self.args = branch, method, args

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.branch, self.method)(*self.args, x)


def onnx_files(device: int, num_segments: int) -> list[str]:
    """A device's graphs in the order they run: its segments, its head, and on device 0 the head's tail
    (applied to the sum of all heads' partial products)."""
    tail = ["device0.tail.onnx"] if device == 0 else []
    return [f"device{device}.seg{i}.onnx" for i in range(num_segments)] + [f"device{device}.head.onnx", *tail]


def export_onnx(out: str | Path, manifest: dict) -> list[list[str]]:
    """Write every device's segments and head (and device 0's tail) as ONNX graphs, and the whole model as
    ``model.onnx`` (the 1-device baseline and the reference of ``--verify``); dynamic batch, height, width."""
    out = Path(out)
    placement = Placement(sum(len(dev) for dev in manifest["placement"]), tuple(map(tuple, manifest["placement"])))
    files = [export_device_onnx(out, placement, d, manifest["image_size"]) for d in range(placement.num_devices)]
    ckpt = load_checkpoint(manifest["source"])
    model = meta_model(ckpt["model_name"], ckpt["model_kwargs"])
    load_weights(model, ckpt.pop("model"), where=manifest["source"], assign=True)
    export_graph(model, (torch.zeros(1, 3, manifest["image_size"], manifest["image_size"]),), out / WHOLE_MODEL,
                 image_dims=True)
    return files


def export_device_onnx(out: Path, placement: Placement, device: int, image_size: int) -> list[str]:
    """Device ``device``'s graphs (its segments, its head, on device 0 the tail), from its shard in ``out``."""
    branch = load_shard_branch(out, placement, device)
    names = onnx_files(device, len(branch.segments))
    steps = [*(_Step(branch, "segment", i) for i in range(len(branch.segments))), _Step(branch, "head")]
    steps += [_Step(branch, "finish")] if device == 0 else []
    x = torch.zeros(1, 3, image_size, image_size)
    for module, name in zip(steps, names):
        export_graph(module.eval(), (x,), out / name, image_dims=module.method != "finish")
        with torch.no_grad():  # not inference_mode: the next export traces with this tensor
            x = module(x)
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="decnn export", description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a training checkpoint (best.pt or last.pt)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--placement", help="groups per device, e.g. 0,1/2,3 or 0,1,2/3")
    where.add_argument("--devices", type=int, help="spread the groups over this many devices, as evenly as they go "
                       "(4 groups on 3: 0,1/2/3)")
    p.add_argument("--out", required=True, help="folder for the shards (created if missing)")
    p.add_argument("--onnx", action="store_true", help="also write each device's segments and head as ONNX")
    g = p.add_argument_group("the peers' spatial splits (with --onnx and --devices)")
    g.add_argument("--mode", choices=("branch", *SPATIAL_MODES), default="branch",
                   help="branch: DeCNN's groups (default); modnn: row bands; grid: 2-D tiles (4, 6, 8, ... devices)")
    g.add_argument("--speeds", help="modnn: the devices' relative speeds, e.g. 1,0.4 (band heights follow them)")
    g.add_argument("--image-size", type=int, help="the image size the graphs are cut for (default: the "
                   "checkpoint's training size)")
    g = p.add_argument_group("quantization (with --onnx)")
    g.add_argument("--quantize", choices=SCHEMES, help="quantize each device's segments (static, calibrated)")
    g.add_argument("--calibration", metavar="DATA_ROOT", help="dataset folder whose training images calibrate "
                   "the quantization and measure its agreement with fp32 (the model's own dataset)")
    g.add_argument("--calibration-images", type=int, default=DEFAULT_IMAGES, metavar="K",
                   help="calibration images, evenly spaced over the training split (default %(default)s)")
    g.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
                   help="refuse a quantization whose top-1 agreement with fp32 on the calibration images is "
                   "under this fraction (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.mode != "branch":
        return _spatial(args)
    if args.speeds or args.image_size:
        print("error: --speeds and --image-size apply to --mode modnn|grid", file=sys.stderr)
        return 2
    if args.quantize and not (args.onnx and args.calibration):
        print(f"error: --quantize {args.quantize} quantizes the ONNX graphs with calibration images: add --onnx "
              "and --calibration DATA_ROOT", file=sys.stderr)
        return 2
    try:
        if args.quantize:
            check_calibration(args.calibration, args.calibration_images)
        ckpt = load_checkpoint(args.checkpoint)
        groups = meta_model(ckpt["model_name"], ckpt["model_kwargs"]).groups
        del ckpt
        placement = (Placement.parse(groups, args.placement) if args.placement
                     else Placement.balanced(groups, args.devices))
        manifest = export_shards(args.checkpoint, placement, args.out)
        if args.onnx:
            manifest["onnx"] = export_onnx(args.out, manifest)
            (Path(args.out) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if args.quantize:
            manifest = quantize_shards(args.out, manifest, args.calibration, args.calibration_images,
                                       args.min_agreement)
    except (FileNotFoundError, CheckpointError, ShardError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for d, dev in enumerate(manifest["devices"]):
        print(f"device {d}: groups {manifest['placement'][d]}, {dev['param_bytes'] / 2**20:.1f} MiB of parameters "
              f"-> {Path(args.out) / dev['file']}")
    if args.quantize:
        print(summary(manifest))
    return 0


def _spatial(args) -> int:
    """``--mode modnn|grid``: the programs and graphs of a spatial split."""
    if not args.onnx or args.placement or args.quantize:
        print(f"error: --mode {args.mode} exports ONNX graphs for --devices N (no placement, no quantization): "
              f"e.g. decnn export CHECKPOINT --mode {args.mode} --devices 4 --out DIR --onnx", file=sys.stderr)
        return 2
    try:
        speeds = [float(v) for v in args.speeds.split(",")] if args.speeds else None
        manifest = export_spatial(args.checkpoint, Tiling.for_mode(args.mode, args.devices, speeds), args.out,
                                  args.image_size)
    except (FileNotFoundError, CheckpointError, ValueError) as e:  # SpatialError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.mode}: {manifest['tiling']} of {manifest['image_size']}x{manifest['image_size']} images, "
          f"{manifest['exchanges']} halo exchanges per batch; every device holds all "
          f"{manifest['devices'][0]['param_bytes'] / 2**20:.1f} MiB of parameters -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
