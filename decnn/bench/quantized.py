"""int8 against fp32 for one device's ONNX branch: latency, size, memory, agreement and accuracy; writes JSON.

    decnn bench quantized --data-root DATA_ROOT [--checkpoint best.pt] --out results/quantized.json

Device 0's branch of 2 (even placement), exported with ``decnn export --onnx`` and quantized with
``decnn.deploy.quantize`` in each setting of ``--variants`` (the first is what ``decnn export --quantize int8`` uses;
the others are the alternatives it was chosen over). Latency: ONNX Runtime, 1 pinned thread, segment by
segment and the head without the exchange (it keeps the shapes); every round times each batch size and
variant in turn, the report gives per-round medians, their median and spread. Size: the branch's graphs on
disk. Memory: peak RSS of a fresh process that loads the graphs and runs them (numpy + ONNX Runtime only).
Quality, all devices with the reference exchange: a random-init model whose batch-norm statistics are
calibrated on the training images (so that activations have a trained model's ranges), and with
``--checkpoint`` a trained one: top-1 agreement with fp32 on the val split and top-1 accuracy of each.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import timm
import torch
from torch import nn

from decnn.bench.one_branch import interleaved_rounds, one_pinned_thread
from decnn.common.checkpoint import load_checkpoint, save_checkpoint
from decnn.common.job_parser import job_parser
from decnn.common.meters import agreement
from decnn.deploy.export import export_onnx
from decnn.deploy.onnx_branch import OnnxBranch
from decnn.deploy.quantize import DEFAULT_IMAGES, Settings, calibration_images, quantize_shards, run_split
from decnn.deploy.shards import MANIFEST, export_shards, meta_model
from decnn.partition import Placement

VARIANTS = {
    "int8": Settings(),
    "qoperator": Settings(quant_format="QOperator"),
    "per-tensor": Settings(per_channel=False),
    "s8s8": Settings(activation_type="QInt8"),
    "no-preprocess": Settings(preprocess=False),
    "fp32-stem": Settings(fp32_stem=True),
}


@torch.no_grad()
def calibrate_batch_norms(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Set every BN's running statistics to the mean over ``images`` (the random init's are 0 and 1)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
    model.train()
    for x in images.split(64):
        model(x)
    return model.eval()


def val_set(root: str, manifest: dict, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The val split at the exported model's image size, prepared as the trainer's evaluation prepares it."""
    from decnn.data import dataset_class
    from decnn.train.transforms import eval_transform

    pretrained = meta_model(manifest["model_name"], manifest["model_kwargs"]).pretrained_cfg
    transform = eval_transform(manifest["image_size"], pretrained["mean"], pretrained["std"])
    dataset = dataset_class(root)(root, split="val", transform=transform)
    items = [dataset[i] for i in range(min(limit or len(dataset), len(dataset)))]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def _export(checkpoint: Path, out: Path, devices: int) -> dict:
    ckpt = load_checkpoint(checkpoint)
    groups = meta_model(ckpt["model_name"], ckpt["model_kwargs"]).groups
    manifest = export_shards(checkpoint, Placement.even(groups, devices), out)
    manifest["onnx"] = export_onnx(out, manifest)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def quantized_copies(fp32_dir: Path, root: Path, data_root: str, images: int, variants: list[str]) -> dict[str, dict]:
    """Each variant quantized in a copy of the fp32 export under ``root``; the manifests by variant."""
    out = {}
    for name in variants:
        shutil.copytree(fp32_dir, root / name)
        manifest = json.loads((root / name / MANIFEST).read_text())
        out[name] = quantize_shards(root / name, manifest, data_root, images, 0.0, VARIANTS[name])
    return out


def quality(fp32_dir: Path, root: Path, manifests: dict, data_root: str, limit: int | None) -> dict:
    """Per variant: agreement with fp32 over the val images (all devices, reference exchange) and top-1 of each."""
    x, labels = val_set(data_root, json.loads((fp32_dir / MANIFEST).read_text()), limit)
    devices = range(len(manifests[next(iter(manifests))]["onnx"]))
    reference = run_split([OnnxBranch(fp32_dir, d) for d in devices], x)
    rows = {"fp32": {"top1": (reference.argmax(1) == labels).float().mean().item()}}
    for name, manifest in manifests.items():
        logits = run_split([OnnxBranch(root / name, d) for d in devices], x)
        rows[name] = {**agreement(logits, reference), "top1": (logits.argmax(1) == labels).float().mean().item(),
                      "calibration_agreement": manifest["quantization"]["agreement"]["top1_agreement"]}
    return {"val_images": len(x), "rows": rows}


def peak_rss(directory: Path, graphs: list[str], image_size: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "decnn.bench.branch_rss", str(directory), *graphs,
                          "--image-size", str(image_size)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def kernel_times(directory: Path, graphs: list[str], image_size: int, runs: int = 5) -> dict[str, float]:
    """ONNX Runtime's profile of the graphs at batch 1 (1 thread): milliseconds per run by operator, as the
    kernels that ran name them (QLinearConv is int8; Conv is fp32)."""
    import onnxruntime as ort

    per_op: dict[str, float] = {}
    x = torch.zeros(1, 3, image_size, image_size).numpy()
    for graph in graphs:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.enable_profiling, options.profile_file_prefix = True, str(directory / f"profile.{graph}")
        session = ort.InferenceSession(str(directory / graph), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            y = session.run(None, {"x": x})[0]
        x = y
        for event in json.loads(Path(session.end_profiling()).read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                op = event["args"]["op_name"]
                per_op[op] = per_op.get(op, 0.0) + event["dur"] / 1e3 / runs
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> int:
    p = job_parser("bench quantized", __doc__)
    p.add_argument("--data-root", required=True, help="the model's dataset (calibration: train, quality: val)")
    p.add_argument("--checkpoint", help="also measure this trained model's agreement and val top-1")
    p.add_argument("--model", default="decnn_resnet34", help="the random-init model (default %(default)s)")
    p.add_argument("--model-kwargs", type=json.loads, default={}, help='e.g. \'{"width": 0.5}\'')
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=15, help="timed passes per round, batch and variant")
    p.add_argument("--calibration-images", type=int, default=DEFAULT_IMAGES)
    p.add_argument("--val-images", type=int, help="val images for agreement and top-1 (default: all)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    one_pinned_thread()
    torch.manual_seed(0)
    model = timm.create_model(args.model, **args.model_kwargs)
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    calibrate_batch_norms(model, calibration_images(args.data_root, args.image_size, mean, std,
                                                    args.calibration_images)[0])
    report = {"model": args.model, "model_kwargs": args.model_kwargs, "image_size": args.image_size,
              "device": 0, "devices": 2, "threads": 1, "rounds": args.rounds, "iters": args.iters,
              "calibration_images": args.calibration_images,
              "variants": {n: asdict(VARIANTS[n]) for n in args.variants}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "random").mkdir()
        save_checkpoint(tmp / "random" / "model.pt", {
            "model": model.state_dict(), "model_name": args.model, "model_kwargs": args.model_kwargs,
            "config": {"data": {"image_size": args.image_size}}})
        fp32_dir = tmp / "random" / "fp32"
        fp32 = _export(tmp / "random" / "model.pt", fp32_dir, 2)
        manifests = quantized_copies(fp32_dir, tmp / "random", args.data_root, args.calibration_images,
                                     args.variants)
        report["random_init"] = quality(fp32_dir, tmp / "random", manifests, args.data_root, args.val_images)
        if args.checkpoint:
            trained_dir = tmp / "trained" / "fp32"
            _export(Path(args.checkpoint), trained_dir, 2)
            trained = quantized_copies(trained_dir, tmp / "trained", args.data_root, args.calibration_images,
                                       args.variants[:1])
            report["trained"] = {"checkpoint": args.checkpoint, **quality(trained_dir, tmp / "trained", trained,
                                                                          args.data_root, args.val_images)}
        dirs = {"fp32": (fp32_dir, fp32["onnx"][0]), **{n: (tmp / "random" / n, m["onnx"][0])
                                                        for n, m in manifests.items()}}
        report["size"] = {n: sum((d / g).stat().st_size for g in graphs) for n, (d, graphs) in dirs.items()}
        report["memory"] = {n: peak_rss(d, graphs, args.image_size) for n, (d, graphs) in dirs.items()}
        report["kernels_ms"] = {n: kernel_times(d, graphs, args.image_size) for n, (d, graphs) in dirs.items()}
        branches = {"fp32": OnnxBranch(fp32_dir, 0), **{n: OnnxBranch(tmp / "random" / n, 0) for n in manifests}}
        inputs = {n: torch.randn(n, 3, args.image_size, args.image_size) for n in args.batches}
        report["rows"] = [{"variant": row.pop("backend"), **row}
                          for row in interleaved_rounds(branches, inputs, args.rounds, args.iters)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    _print(report)
    return 0


def _print(report: dict) -> None:
    fp32 = {r["batch"]: r["median_ms"] for r in report["rows"] if r["variant"] == "fp32"}
    for r in report["rows"]:
        print(f"{r['variant']:>14} batch {r['batch']}: {r['median_ms']:.2f} ms (rounds {r['min_ms']:.2f}.."
              f"{r['max_ms']:.2f}), {fp32[r['batch']] / r['median_ms']:.2f}x fp32")
    for name, size in report["size"].items():
        print(f"{name:>14}: {size / 2**20:.1f} MiB on disk ({size / report['size']['fp32']:.2f} of fp32), peak RSS "
              f"{report['memory'][name]['peak_rss'] / 2**20:.0f} MiB")
    for name, ops in report["kernels_ms"].items():
        print(f"{name:>14} kernels: " + ", ".join(f"{op} {ms:.2f}" for op, ms in list(ops.items())[:5]) + " ms")
    for which in ("random_init", "trained"):
        for name, row in report.get(which, {}).get("rows", {}).items():
            extra = f", agreement {row['top1_agreement']:.2%}, max |dlogit| {row['max_abs_diff']:.3g}" \
                if name != "fp32" else ""
            print(f"{which:>11} {name:>14}: val top-1 {row['top1']:.2%}{extra}")


if __name__ == "__main__":
    sys.exit(main())
