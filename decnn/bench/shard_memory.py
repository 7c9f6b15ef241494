"""Peak memory of loading one device's branch: the whole model then slicing it, a shard, a mapped checkpoint.

    decnn bench shard-memory CHECKPOINT SHARD_DIR --out results/shard_memory.json

Each load runs in a fresh process (``--one``) that reports its peak RSS after imports, after the load (every
weight read) and after the worker's preparation (BN folding, channels-last): what each step cost this device.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from decnn.common.exitcodes import run_main
from decnn.common.job_parser import job_parser

HOWS = ("whole", "shard", "checkpoint")


def load_once(how: str, checkpoint: str, shards: str, device: int) -> dict:
    """In this process: load ``device``'s branch ``how`` and prepare it as a worker does; peak RSS before and
    after, and its parameter bytes."""
    import torch

    from decnn.common.checkpoint import load_model
    from decnn.common.timing import peak_rss_bytes
    from decnn.deploy.shards import load_checkpoint_branch, load_shard_branch, meta_model, read_manifest
    from decnn.inference.metrics import param_bytes
    from decnn.inference.optimize import prepare_for_inference
    from decnn.partition import Placement, extract_branch

    manifest = read_manifest(shards)
    placement = Placement(sum(len(d) for d in manifest["placement"]), tuple(map(tuple, manifest["placement"])))
    # The same warm-up for every way: the model's code imported and its structure built without weights, so
    # that what is measured below is the weights, not first-use imports (about 11-25 MiB, varying by machine).
    extract_branch(meta_model(manifest["model_name"], manifest["model_kwargs"]), placement, device)
    before = peak_rss_bytes()
    if how == "whole":  # what every rank did before shards
        branch = extract_branch(load_model(checkpoint)[0], placement, device)
    elif how == "shard":
        branch = load_shard_branch(shards, placement, device)
    else:
        branch = load_checkpoint_branch(checkpoint, placement, device)
    held = param_bytes(branch)
    with torch.no_grad():
        sum(p.sum() for p in branch.parameters())  # read every weight (a mapped file is read lazily)
    loaded = peak_rss_bytes()
    prepare_for_inference(branch)  # BN folding and channels-last, as the worker's set-up does
    return {"how": how, "device": device, "rss_before_load": before, "load_peak_bytes": loaded - before,
            "setup_peak_bytes": peak_rss_bytes() - before, "peak_rss": peak_rss_bytes(), "param_bytes": held}


def measure(checkpoint: str, shards: str, device: int, how: str) -> dict:
    """``load_once`` in a fresh process."""
    out = subprocess.run([sys.executable, "-m", "decnn.bench.shard_memory", checkpoint, shards, "--one", how,
                          "--device", str(device)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = job_parser("bench shard-memory", __doc__)
    p.add_argument("checkpoint")
    p.add_argument("shards", help="the checkpoint's shards (decnn export)")
    p.add_argument("--one", choices=HOWS, help=argparse.SUPPRESS)
    p.add_argument("--device", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(load_once(args.one, args.checkpoint, args.shards, args.device)))
        return 0
    from decnn.deploy.shards import read_manifest

    rows = [measure(args.checkpoint, args.shards, d, how)
            for d in range(len(read_manifest(args.shards)["placement"])) for how in HOWS]
    for r in rows:
        print(f"device {r['device']} {r['how']:>10}: peak RSS {r['peak_rss'] / 2**20:.0f} MiB = imports "
              f"{r['rss_before_load'] / 2**20:.0f} + load {r['load_peak_bytes'] / 2**20:.0f} (set-up "
              f"{r['setup_peak_bytes'] / 2**20:.0f}) MiB; parameters {r['param_bytes'] / 2**20:.1f} MiB")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    # A missing checkpoint or shard folder is an input error (exit 2, one line).
    sys.exit(run_main(main, usage_errors=(OSError, ValueError)))
