"""Get, check and prepare Tiny-ImageNet, or write the offline stand-in (``decnn data``).

    decnn data download --root data                      # Kaggle (competition tiny-imagenet)
    decnn data download --root data --from-zip tiny-imagenet-200.zip
    decnn data standin                                   # offline stand-in: data/standin-digits
    decnn data check --root data/tiny-imagenet-200
    decnn data prepare --root data/tiny-imagenet-200     # decode once into a uint8 cache
    decnn data sample --root data/standin-digits --images 350 --size 32 --out val.npz   # for `decnn edge --inputs`
"""

import argparse
import sys
from pathlib import Path

from decnn.common.exitcodes import RUNTIME, USAGE, run_main
from decnn.common.job_parser import job_parser
from decnn.data import cache
from decnn.data.download import KaggleUnavailableError, download, unpack_zip
from decnn.data.layout import DEFAULT_ROOT, STANDIN_ROOT, DatasetCorruptError, scan
from decnn.data.standin import make_standin


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        print(args.run(args))
    except (FileNotFoundError, FileExistsError, DatasetCorruptError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE
    except KaggleUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return RUNTIME
    return 0


def _download(args) -> str:
    if args.from_zip:
        layout = unpack_zip(args.from_zip, args.root / DEFAULT_ROOT.name)
    else:
        layout = download(args.root)
    return f"{layout.summary()}\nNext: decnn data prepare --root {layout.root}"


def _standin(args) -> str:
    return scan(make_standin(args.root)).summary()


def _check(args) -> str:
    return scan(args.root).summary()


def _prepare(args) -> str:
    layout = scan(args.root)
    files = cache.prepare(layout)
    sizes = [f"  cache:   {path} ({path.stat().st_size / 2**20:.1f} MiB)" for path in files.values()]
    return "\n".join([layout.summary(), *sizes])


def _sample(args) -> str:
    """The first val images, resized as the trainer's evaluation does, as uint8 ``images`` and ``labels``: what
    ``decnn edge --inputs`` reads on a device without torch or an image library."""
    import numpy as np
    from torchvision.transforms import v2

    from decnn.data import TinyImageNet

    scan(args.root)
    ds = TinyImageNet(args.root, split="val", transform=v2.Resize(args.size, antialias=True) if args.size else None)
    count = min(args.images, len(ds))
    items = [ds[i] for i in range(count)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, images=np.stack([x.numpy() for x, _ in items]), labels=np.array([y for _, y in items]))
    return f"wrote {count} val images of {args.root} ({tuple(items[0][0].shape)}, uint8) and labels to {args.out}"


def _parser() -> argparse.ArgumentParser:
    parser = job_parser("data", __doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    p = commands.add_parser("download", help="fetch Tiny-ImageNet from Kaggle, or unpack a zip")
    p.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT.parent,
        help=f"data folder; the dataset goes to ROOT/{DEFAULT_ROOT.name} (default: %(default)s)",
    )
    p.add_argument(
        "--from-zip",
        type=Path,
        metavar="PATH",
        help="unpack this tiny-imagenet-200.zip (downloaded by hand) instead of using Kaggle",
    )
    p.set_defaults(run=_download)

    p = commands.add_parser("standin", help="write the offline stand-in (digits in the same layout)")
    p.add_argument("--root", type=Path, default=STANDIN_ROOT, help="dataset folder (default: %(default)s)")
    p.set_defaults(run=_standin)

    for name, run, text in [
        ("check", _check, "validate a dataset and print a summary"),
        ("prepare", _prepare, "validate a dataset and build its cache"),
    ]:
        p = commands.add_parser(name, help=text)
        p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="dataset folder (default: %(default)s)")
        p.set_defaults(run=run)
    p = commands.add_parser("sample", help="the first val images and labels as .npz (decnn edge --inputs)")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="dataset folder (default: %(default)s)")
    p.add_argument("--images", type=int, default=1000, help="how many (default: %(default)s)")
    p.add_argument("--size", type=int, help="resize to SIZE x SIZE, the model's training size (default: as stored)")
    p.add_argument("--out", type=Path, required=True, help="the .npz to write")
    p.set_defaults(run=_sample)
    return parser


if __name__ == "__main__":
    sys.exit(run_main(main))
