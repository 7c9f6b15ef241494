"""Peak memory of a device that loads its ONNX graphs and runs them, with numpy and ONNX Runtime only.

    python -m decnn.bench.branch_rss SHARD_DIR GRAPH... --image-size 64

Run in a fresh process per measurement (``decnn.bench.quantized`` does): the graphs run in turn on one
zero image (the exchange keeps the shapes, so segment i+1 takes segment i's output); prints JSON with the
peak RSS after the imports and after the run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def vm_hwm_bytes() -> int:
    """Peak RSS of this process (Linux's VmHWM: ru_maxrss would report the parent's peak across exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m decnn.bench.branch_rss", description=__doc__.split("\n\n")[0])
    p.add_argument("directory")
    p.add_argument("graphs", nargs="+", help="the device's graphs in the order they run (segments, then head)")
    p.add_argument("--image-size", type=int, default=64)
    args = p.parse_args(argv)
    imported = vm_hwm_bytes()
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    sessions = [ort.InferenceSession(str(Path(args.directory) / g), options, providers=["CPUExecutionProvider"])
                for g in args.graphs]
    x = np.zeros((1, 3, args.image_size, args.image_size), np.float32)
    for session in sessions:
        x = session.run(None, {"x": x})[0]
    peak = vm_hwm_bytes()
    print(json.dumps({"rss_after_imports": imported, "peak_rss": peak, "load_and_run_bytes": peak - imported}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
