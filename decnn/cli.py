"""decnn: decoupled CNNs for split inference across edge devices. One command, one job each.

usage: decnn <job> [--help] [...]

jobs:
  train     train a model on Tiny-ImageNet, resume a run, or evaluate a checkpoint (= train.py)
  infer     split inference across processes or hosts, and its baselines (= infer_distributed.py)
  plan      profile devices and links, rank every way to split, emulate uneven devices
  bench     the side-by-side benchmark; `decnn bench TOOL` for one measurement: {tools}
  export    a checkpoint as per-device shards, optionally ONNX graphs
  convert   a checkpoint of the authors' training code as a decnn checkpoint
  compare   training and inference runs side by side (table + plot)
  data      download, check or prepare Tiny-ImageNet, or write the offline stand-in
  models    the model table: params and FLOPs, whole and per device
  edge      run an export on devices without torch: ONNX Runtime computes, MPI exchanges (mpiexec)
  deploy    an export onto boards over ssh: install, copy each board its part, run, verify
  device    one device of an elastic split (decnn.split(..., elastic=True)): torch's elastic agent, one node

`decnn <job> --help` lists a job's options with examples. Exit codes, for every job: 0 done, 1 runtime
failure, 2 usage or input error (one line: `error: ...`), 130 interrupted.
"""

from __future__ import annotations

import importlib
import sys

from decnn.common.exitcodes import USAGE, run_main

JOBS = {
    "train": "decnn.train.__main__",
    "infer": "decnn.jobs.infer",
    "plan": "decnn.plan.__main__",
    "bench": "decnn.bench.__main__",
    "export": "decnn.deploy.export",
    "convert": "decnn.train.convert",
    "compare": "decnn.bench.compare",
    "data": "decnn.data.__main__",
    "models": "decnn.jobs.models",
    "edge": "decnn.edge.launch",
    "deploy": "decnn.cluster.deploy",
    "device": "decnn.serve.device",
}
BENCH_TOOLS = {  # `decnn bench TOOL`: the stand-alone measurements
    "paper": "decnn.bench.paper",
    "kernels": "decnn.bench.kernels",
    "onnx": "decnn.bench.onnx_vs_torch",
    "shard-memory": "decnn.bench.shard_memory",
    "data-loading": "decnn.bench.data_loading",
    "links": "decnn.bench.link_check",
    "edge-memory": "decnn.bench.edge_memory",
    "quantized": "decnn.bench.quantized",
    "elastic": "decnn.bench.lost_devices",
    "boards": "decnn.bench.validate_boards",
    "scaling": "decnn.bench.scaling",
    "deploy": "decnn.bench.deploy",
}


def usage() -> str:
    return __doc__.format(tools=", ".join(BENCH_TOOLS)).strip()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in JOBS:
        asked = bool(argv) and argv[0] in ("-h", "--help")
        if argv and not asked:
            print(f"error: unknown job {argv[0]!r}; choose one of {', '.join(JOBS)}, e.g. decnn train --help",
                  file=sys.stderr)
        print(usage(), file=sys.stdout if asked else sys.stderr)
        sys.exit(0 if asked else USAGE)
    job, args = argv[0], argv[1:]
    module = JOBS[job]
    if job == "bench" and args and args[0] in BENCH_TOOLS:
        module, args = BENCH_TOOLS[args[0]], args[1:]
    sys.exit(run_main(lambda: importlib.import_module(module).main(args)))


if __name__ == "__main__":
    main()
