"""Train a (decoupled) ResNet on Tiny-ImageNet, or evaluate a checkpoint.

    python train.py --config configs/decnn_resnet34_g4_x1.5.yaml [section.key=value ...]
    torchrun --standalone --nproc-per-node 4 train.py --config configs/resnet34.yaml
    python train.py --resume runs/train/<run>/last.pt [section.key=value ...]
    python train.py --eval-only runs/train/<run>/best.pt
"""

import argparse
import sys

from decnn.data import DatasetCorruptError, DatasetNotFoundError
from decnn.train.checkpoint import CheckpointError, load_checkpoint
from decnn.train.config import ConfigError, load_config
from decnn.train.trainer import evaluate_checkpoint, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (see configs/); default: the checkpoint's own config")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--resume", metavar="CKPT", help="continue a run from its last.pt (= train.resume=CKPT)")
    source.add_argument("--eval-only", metavar="CKPT", help="report val top-1/top-5 of a checkpoint and exit")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. optim.lr=0.1")
    args = parser.parse_args()
    if not (args.config or args.resume or args.eval_only):
        parser.error("give --config, --resume or --eval-only")
    try:
        checkpoint = args.resume or args.eval_only
        base = load_checkpoint(checkpoint)["config"] if checkpoint and not args.config else None
        overrides = [*args.overrides, *([f"train.resume={args.resume}"] if args.resume else [])]
        cfg = load_config(args.config, overrides, base=base)
        if args.eval_only:
            metrics = evaluate_checkpoint(args.eval_only, cfg)
            print(f"{args.eval_only}: top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  "
                  f"loss {metrics['loss']:.4f}")
        else:
            train(cfg)
    except (ConfigError, CheckpointError, DatasetNotFoundError, DatasetCorruptError,
            FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
