"""Train a (decoupled) ResNet on Tiny-ImageNet, resume a run, or evaluate a checkpoint.

    decnn train --config configs/decnn_resnet34_g4_x1.5.yaml [section.key=value ...]
    torchrun --standalone --nproc-per-node 4 -m decnn.train --config configs/resnet34.yaml
    decnn train --resume runs/train/<run>/last.pt [section.key=value ...]
    decnn train --eval-only runs/train/<run>/best.pt

Exit codes: 2 usage or input error (config, checkpoint, dataset, run folder), 1 runtime failure, 130 Ctrl-C.
"""

import sys
from pathlib import Path

from decnn.common.exitcodes import USAGE, run_main
from decnn.common.job_parser import job_parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = job_parser("train", __doc__, prog)
    parser.add_argument("--config", help="YAML config (see configs/); default: the checkpoint's own config")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--resume", metavar="CKPT", help="continue a run from its last.pt (= train.resume=CKPT)")
    source.add_argument("--eval-only", metavar="CKPT", help="report val top-1/top-5 of a checkpoint and exit")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. optim.lr=0.1")
    args = parser.parse_args(argv)
    if not (args.config or args.resume or args.eval_only):
        parser.error("give --config, --resume or --eval-only, e.g. --config configs/demo_resnet34.yaml")
    # Checked before torch loads (seconds): a mistyped path is reported at once.
    checkpoint = args.resume or args.eval_only
    for flag, path, example in (("--config", args.config, "configs/resnet34.yaml"),
                                ("--resume" if args.resume else "--eval-only", checkpoint, "runs/train/<run>/last.pt")):
        if path and not Path(path).is_file():
            print(f"error: {flag} {path}: no such file, e.g. {flag} {example}", file=sys.stderr)
            return USAGE

    from decnn.common.checkpoint import CheckpointError, load_checkpoint
    from decnn.common.errors import ConfigError
    from decnn.data import DatasetCorruptError, DatasetNotFoundError
    from decnn.train.config import load_config
    from decnn.train.evaluate import evaluate_checkpoint
    from decnn.train.trainer import train

    def run() -> None:
        base = load_checkpoint(checkpoint)["config"] if checkpoint and not args.config else None
        overrides = [*args.overrides, *([f"train.resume={args.resume}"] if args.resume else [])]
        cfg = load_config(args.config, overrides, base=base)
        if args.eval_only:
            metrics = evaluate_checkpoint(args.eval_only, cfg)
            print(f"{args.eval_only}: top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  "
                  f"loss {metrics['loss']:.4f}")
        else:
            train(cfg)

    return run_main(run, usage_errors=(ConfigError, CheckpointError, DatasetNotFoundError, DatasetCorruptError,
                                       FileNotFoundError, FileExistsError))


if __name__ == "__main__":
    sys.exit(main())
