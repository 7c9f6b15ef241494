"""``python -m decnn.cluster.measure FOLDER``: a board times the branches it might hold, with the runtime it will
run (ONNX Runtime, no torch, no MPI), for ``decnn plan --hosts``.

FOLDER holds ``k1/`` .. ``kG/``, the branch of k groups each (:mod:`decnn.cluster.profile_set`). Each is timed in a
fresh process of its own, as a device holds it: the seconds of every step with nothing on the wire (each segment
with its packing, the head last; medians of repeated steps after a warm-up, :func:`decnn.edge.profile.time_branch`)
and the process's peak RSS over them. Prints one JSON line: ``step_s[k - 1]`` and ``peak_rss[k - 1]`` (null where
the board could not run k groups, e.g. out of memory).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from decnn.common.timing import peak_rss_bytes, reset_peak_rss
from decnn.edge.bundle import DeviceBundle
from decnn.edge.device_run import release_freed_memory
from decnn.edge.profile import time_branch

REPEATS = 10


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m decnn.cluster.measure", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="k1/ .. kG/, or with --one a single k<k>/")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: this board's cores, as a run)")
    p.add_argument("--one", action="store_true", help="time the one branch in FOLDER (a child's job)")
    return p


def measure_one(folder: Path, batch: int, threads: int) -> dict:
    """One branch's step times and the peak RSS of this process while it runs them."""
    bundle = DeviceBundle(folder, 0, threads)
    size = bundle.manifest["image_size"]
    images = np.random.default_rng(0).integers(0, 256, (batch, 3, size, size), dtype=np.uint8)
    release_freed_memory()
    reset_peak_rss()
    step_s = time_branch(bundle, [images], REPEATS)
    return {"step_s": step_s, "peak_rss": peak_rss_bytes()}


def measure_all(folder: Path, batch: int, threads: int | None) -> dict:
    """Every ``k<k>/`` of ``folder``, each in a child process."""
    ks = sorted(int(p.name[1:]) for p in folder.glob("k*") if p.name[1:].isdigit())
    out: dict = {"step_s": [], "peak_rss": [], "threads": threads}
    for k in ks:
        argv = [sys.executable, "-m", "decnn.cluster.measure", str(folder / f"k{k}"), "--one", "--batch", str(batch),
                *(["--threads", str(threads)] if threads else [])]
        child = subprocess.run(argv, capture_output=True, text=True)
        result = json.loads(child.stdout) if child.returncode == 0 else {"step_s": None, "peak_rss": None}
        out["step_s"].append(result["step_s"])
        out["peak_rss"].append(result["peak_rss"])
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    threads = args.threads or len(os.sched_getaffinity(0))
    if args.one:
        print(json.dumps(measure_one(Path(args.folder), args.batch, threads)))
    else:
        print(json.dumps(measure_all(Path(args.folder), args.batch, threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
