"""Images/s from decoding the JPEG folder (PIL) vs reading the prepared cache, in one run.

    decnn bench data-loading [--root R] [--split train] [--repeats 5] [--out FILE]

Without --root it uses the digits stand-in (written first if missing). Each method makes
``--repeats`` full passes over the split, producing the same uint8 [3, 64, 64] tensors; the median
pass is reported. Files are in the OS page cache after the first pass, so this measures decoding
and copying, not the disk.
"""

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from decnn.common.exitcodes import run_main
from decnn.common.job_parser import job_parser
from decnn.data import STANDIN_ROOT, TinyImageNet, cache, make_standin
from decnn.data.images import read_image
from decnn.data.layout import scan

BATCH = 256


def jpeg_pass(paths: list[Path]) -> None:
    for path in paths:
        torch.from_numpy(np.ascontiguousarray(read_image(path).transpose(2, 0, 1)))


def cache_pass(ds: TinyImageNet) -> None:
    for i in range(len(ds)):
        ds[i]


def loader_pass(ds: TinyImageNet) -> None:
    for _ in DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=0):
        pass


def timed(fn, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = job_parser("bench data-loading", __doc__)
    parser.add_argument("--root", type=Path, help=f"dataset folder (default: the stand-in, {STANDIN_ROOT})")
    parser.add_argument("--split", default="train", choices=["train", "val"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("results/data_loading.json"))
    args = parser.parse_args(argv)

    root = args.root or make_standin(STANDIN_ROOT)
    layout = scan(root)
    source = layout.split(args.split)
    files = cache.cache_files(layout.root, args.split)
    built = not cache.is_current(files, cache.source_key(layout.root, source), len(source))
    start = time.perf_counter()
    ds = TinyImageNet(root, args.split)
    open_s = time.perf_counter() - start

    methods = {
        "jpeg folder, PIL decode": lambda: jpeg_pass(ds.paths),
        "cache, ds[i] (mmap)": lambda: cache_pass(ds),
        f"cache, DataLoader(batch={BATCH}, workers=0)": lambda: loader_pass(ds),
    }
    results = {}
    for name, fn in methods.items():
        seconds = timed(fn, args.repeats)
        results[name] = {"images_per_s": len(ds) / statistics.median(seconds), "seconds": seconds}

    report = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "root": str(root),
        "split": args.split,
        "images": len(ds),
        "repeats": args.repeats,
        "cache_built_this_run": built,
        "cache_open_s": open_s,
        "results": results,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    jpeg_rate = results["jpeg folder, PIL decode"]["images_per_s"]
    print(f"{len(ds)} {args.split} images from {root}, median of {args.repeats} passes")
    print(f"{'method':<40} {'images/s':>10} {'vs jpeg':>8}")
    for name, result in results.items():
        print(f"{name:<40} {result['images_per_s']:>10.0f} {result['images_per_s'] / jpeg_rate:>7.1f}x")
    action = "built" if built else "reused"
    print(f"cache {action} on open in {open_s:.2f} s; results in {args.out}")


if __name__ == "__main__":
    sys.exit(run_main(main))
