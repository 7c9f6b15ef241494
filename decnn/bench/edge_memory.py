"""``decnn bench edge-memory``: what a device of the device runtime holds, against the whole model.

    decnn bench edge-memory --out results/edge_memory.json

Exports a random-init DeCNN ResNet-34 (G4 x1.5) for 2 devices, then measures peak RSS in fresh processes:
an idle device (numpy, ONNX Runtime, mpi4py and the runtime imported, MPI initialised, no graph), each device
of the split and the whole model's graph on one device, at each batch size; and the branch's RSS above the
idle process as a fraction of the whole model's above it. Memory is not noisy: one run of each.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from decnn.bench.configurations import BenchConfig
from decnn.bench.edge import export_kind, export_models, idle_rss_bytes
from decnn.common.job_parser import job_parser

CONFIGS = (BenchConfig("edge decnn branch fp32", "branch", 2, 1, runtime="edge"),
           BenchConfig("edge decnn single", "single", 1, 1, runtime="edge"))


def measure(folders: dict, batches: list[int], images: int) -> dict:
    idle = idle_rss_bytes() / 2**20
    rows = {"idle_mib": idle, "batches": {}}
    branch_dir, whole_dir = (folders[export_kind(c)] for c in CONFIGS)
    for batch in batches:
        row = {}
        for name, folder, extra in (("branch", branch_dir, []), ("whole", whole_dir, ["--single"])):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "r.json"
                subprocess.run([sys.executable, "-m", "decnn.edge.launch", str(folder), *extra, "--batch",
                                str(batch), "--images", str(images), "--threads", "1", "--out", str(out)],
                               check=True, capture_output=True, text=True)
                row[f"{name}_peak_mib_per_rank"] = [b / 2**20 for b in json.loads(out.read_text())["peak_rss_per_rank"]]
        branch, whole = max(row["branch_peak_mib_per_rank"]), row["whole_peak_mib_per_rank"][0]
        row["branch_above_idle_vs_whole"] = (branch - idle) / (whole - idle)
        rows["batches"][str(batch)] = row
    return rows


def main(argv: list[str] | None = None) -> int:
    p = job_parser("bench edge-memory", __doc__)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--out", default="results/edge_memory.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(export_models(CONFIGS, Path(tmp)), args.batch, args.images)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"idle device runtime: {result['idle_mib']:.1f} MiB")
    for batch, row in result["batches"].items():
        print(f"batch {batch}: branch {max(row['branch_peak_mib_per_rank']):.1f} MiB per device, whole model "
              f"{row['whole_peak_mib_per_rank'][0]:.1f} MiB; branch above idle / whole above idle "
              f"{row['branch_above_idle_vs_whole']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
