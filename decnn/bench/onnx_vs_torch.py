"""ONNX Runtime against PyTorch for one device's branch (1 thread, interleaved rounds); writes JSON.

    decnn bench onnx --out results/onnx_vs_torch.json       # on an otherwise idle machine

Both run device 0's branch of the same random-init model (2 devices, even placement), segment by segment
and the head, without the exchange (it keeps the shapes): PyTorch as the workers prepare it (BN folded,
channels-last), ONNX Runtime from ``decnn export --onnx`` with all graph optimisations. Every round times
each batch size and backend in turn; the report gives per-round medians, their median and spread.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import timm
import torch

from decnn.bench.one_branch import chain, interleaved_rounds, one_pinned_thread
from decnn.common.checkpoint import save_checkpoint
from decnn.common.job_parser import job_parser
from decnn.deploy.export import export_onnx
from decnn.deploy.onnx_branch import OnnxBranch
from decnn.deploy.shards import export_shards, load_shard_branch
from decnn.inference.optimize import prepare_for_inference
from decnn.partition import Placement


def main(argv: list[str] | None = None) -> int:
    p = job_parser("bench onnx", __doc__)
    p.add_argument("--model", default="decnn_resnet34")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=15, help="timed passes per round, batch and backend")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    one_pinned_thread()
    torch.manual_seed(0)
    model = timm.create_model(args.model).eval()
    placement = Placement.even(model.groups, 2)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model.pt"
        save_checkpoint(ckpt, {"model": model.state_dict(), "model_name": args.model, "model_kwargs": {},
                               "config": {"data": {"image_size": args.image_size}}})
        manifest = export_shards(ckpt, placement, tmp)
        manifest["onnx"] = export_onnx(tmp, manifest)
        (Path(tmp) / "manifest.json").write_text(json.dumps(manifest))
        backends = {"torch": prepare_for_inference(load_shard_branch(tmp, placement, 0)),
                    "onnxruntime": OnnxBranch(tmp, 0, threads=1)}
        inputs = {n: torch.randn(n, 3, args.image_size, args.image_size) for n in args.batches}
        with torch.inference_mode():
            diff = (chain(backends["torch"], inputs[1]) - chain(backends["onnxruntime"], inputs[1])).abs().max()
        rows = interleaved_rounds(backends, inputs, args.rounds, args.iters)
    report = {"model": args.model, "image_size": args.image_size, "device": 0, "placement": placement.as_lists(),
              "threads": 1, "rounds": args.rounds, "iters": args.iters, "max_abs_diff": diff.item(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        print(f"{row['backend']:>12} batch {row['batch']}: {row['median_ms']:.2f} ms "
              f"(rounds {row['min_ms']:.2f}..{row['max_ms']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
