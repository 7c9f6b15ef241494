"""The ``decnn`` console script: one entry point for the package's commands.

    decnn models [...]     the model table (python -m decnn.models)
    decnn convert [...]    a checkpoint of the authors' training code as a decnn checkpoint
    decnn compare [...]    training and inference runs side by side (table + plot)
    decnn bench [...]      the side-by-side benchmark (python -m decnn.bench)
    decnn data [...]       download, check, prepare Tiny-ImageNet or make the stand-in (python -m decnn.data)
    decnn export [...]     a checkpoint as per-device shards, optionally ONNX graphs (python -m decnn.export)
    decnn edge [...]       a split run by devices without torch: ONNX Runtime + MPI (python -m decnn.edge.launch)
"""

from __future__ import annotations

import importlib
import sys

from decnn.exitcodes import USAGE, run_main

COMMANDS = {
    "models": "decnn.models.table",
    "convert": "decnn.train.convert",
    "compare": "decnn.bench.compare",
    "bench": "decnn.bench.__main__",
    "data": "decnn.data.__main__",
    "export": "decnn.export",
    "edge": "decnn.edge.launch",
}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else USAGE)
    sys.exit(run_main(lambda: importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])))


if __name__ == "__main__":
    main()
