"""DeCNN split inference against the alternatives, side by side, in one run (``decnn bench``).

Rounds interleave every configuration (round 1 runs each once, then round 2, ...) so that machine noise
hits all alike; each reported figure is the median over rounds, and ratios are taken within a round.
``decnn bench TOOL`` runs one stand-alone measurement instead (see ``decnn --help``).

    decnn bench                                             # batch 1 and 8, 2 devices, loopback
    sudo .venv/bin/decnn bench --link 1gbit 100mbit 20mbit --batch 1
    sudo .venv/bin/decnn bench --family resnet34 resnet50 --runtime edge --batch 1 --link loopback 1gbit 100mbit
    decnn bench paper --bench results/bench.json --runs runs
"""

from __future__ import annotations

import sys

from decnn.bench.configurations import FAMILIES
from decnn.common.exitcodes import run_main
from decnn.common.job_parser import job_parser
from decnn.emulation.rates import parse_rate
from decnn.wire.exchange import EXCHANGE_DTYPES


def parse_args(argv):
    p = job_parser("bench", __doc__)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    p.add_argument("--devices", type=int, nargs="+", default=[2],
                   help="device counts for the split runs (DeCNN's: those dividing its groups; default 2)")
    p.add_argument("--family", nargs="+", choices=tuple(FAMILIES), default=["resnet34"],
                   help="resnet34: plain ResNet-34 and DeCNN ResNet-34 G4 x1.5 at 64x64 (default); resnet50: the "
                   "paper's, plain ResNet-50 and resnet50_s3_addchannel at 224x224")
    p.add_argument("--link", nargs="+", default=["loopback"],
                   help="loopback and/or emulated links such as 1gbit 100mbit 20mbit (needs root)")
    p.add_argument("--link-batch", type=int, nargs="+",
                   help="batch sizes that also run over the emulated links (default: every --batch)")
    p.add_argument("--exchange-dtype", nargs="+", default=["fp32", "int8"], choices=EXCHANGE_DTYPES)
    p.add_argument("--overlap", type=int, default=2, help="batches in flight for the overlap runs (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--images", type=int, default=16, help="timed batches per run (default 16)")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per run (default 2)")
    p.add_argument("--timeout", type=float, default=60.0, help="collective timeout of each run (s)")
    p.add_argument("--out", default="results/bench.json", help="JSON report; a .md table is written beside it")
    p.add_argument("--log-dir", default="runs/bench", help="TensorBoard runs ('' for none)")
    p.add_argument("--runtime", nargs="+", choices=("torch", "edge"), default=["torch", "edge"],
                   help="torch: infer_distributed.py; edge: decnn edge, ONNX Runtime + MPI (default both)")
    args = p.parse_args(argv)
    for flag in ("rounds", "images", "overlap"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1")
    for link in args.link:
        if link != "loopback":
            try:
                parse_rate(link)
            except ValueError as e:
                p.error(f"--link {link}: {e}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)  # before torch loads: a usage error is reported at once
    from decnn.bench.side_by_side import run

    return run(args, argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
