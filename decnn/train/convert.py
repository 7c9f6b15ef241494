"""A checkpoint of the authors' training code as a decnn checkpoint (``decnn convert REF.pth OUT.pt``).

Reads what their ``main.py`` saves (``{'arch', 'state_dict', 'epoch', 'best_prec1', ...}``) or a bare state
dict, with or without DataParallel's ``module.`` prefix; the architecture comes from the checkpoint's
``arch`` or ``--arch``, the number of classes from its classifier. Writes ``{model, model_name,
model_kwargs, config}`` (decnn's format, see decnn.common.checkpoint), which ``decnn train --eval-only`` and
``decnn infer --checkpoint`` read.

    decnn convert resnet34_s3_x15.pth runs/converted/resnet34_s3_x15.pt
    decnn convert state_dict.pth runs/converted/vgg16.pt --arch vgg16_bn_s3_addchannel_v2
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import timm
import torch

from decnn.common.checkpoint import normalization_kwargs, save_checkpoint
from decnn.common.job_parser import job_parser
from decnn.data.folder import ImageFolderTree
from decnn.models.reference import REFERENCE_ZOO, ReferenceFormatError, to_decnn_state_dict
from decnn.train.config import load_config

EXAMPLE = "decnn convert resnet34_s3_x15.pth runs/converted/resnet34_s3_x15.pt"


def read_reference(path: str | Path, arch: str | None) -> tuple[str, dict[str, torch.Tensor], dict]:
    """The architecture, the state dict (``module.`` prefixes removed) and the whole checkpoint dict."""
    if not Path(path).is_file():
        raise ReferenceFormatError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).splitlines()[0][:200]
        raise ReferenceFormatError(f"{path} does not load as a checkpoint (with weights_only=True): {reason}") from e
    if not isinstance(ckpt, dict):
        raise ReferenceFormatError(f"{path} holds a {type(ckpt).__name__}, not a state dict or a checkpoint dict")
    wrapped = "state_dict" in ckpt
    state = {re.sub(r"^module\.", "", k): v for k, v in (ckpt["state_dict"] if wrapped else ckpt).items()}
    saved_arch = ckpt.get("arch") if wrapped else None
    if arch and saved_arch and arch != saved_arch:
        raise ReferenceFormatError(f"{path} holds a {saved_arch}, not the --arch {arch} asked for")
    arch = arch or saved_arch
    if arch is None:
        raise ReferenceFormatError(f"{path} does not name its architecture: give --arch, e.g. --arch resnet34_s3_x15")
    if arch not in REFERENCE_ZOO:
        raise ReferenceFormatError(f"architecture {arch!r} has no decnn twin; convertible: {', '.join(REFERENCE_ZOO)}")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ReferenceFormatError(f"{path}: the state dict holds values that are not tensors")
    return arch, state, ckpt if wrapped else {}


def convert(path: str | Path, out: str | Path, arch: str | None = None) -> dict:
    """Write the decnn checkpoint of the authors' checkpoint at ``path`` to ``out``; return it."""
    arch, state, rest = read_reference(path, arch)
    name, kwargs = REFERENCE_ZOO[arch]
    classifier = state.get("classifier.6.weight", state.get("fc.weight"))
    if classifier is None:
        raise ReferenceFormatError(f"{path}: no classifier (fc.weight or classifier.6.weight) in the state dict")
    kwargs = {**kwargs, "num_classes": classifier.shape[0],
              **normalization_kwargs(name, ImageFolderTree.mean, ImageFolderTree.std)}  # trained on ImageNet
    model = timm.create_model(name, **kwargs)
    model.load_state_dict(to_decnn_state_dict(state, model))
    model_cfg = [f"model.name={name}", f"model.groups={kwargs['groups']}", f"model.width={kwargs['width']}",
                 f"model.stem={kwargs.get('stem', '')}"]
    config = load_config(overrides=[*model_cfg, "data.image_size=224", "data.crop_pct=0.875"])
    checkpoint = {
        "model": model.state_dict(),
        "model_name": name,
        "model_kwargs": kwargs,
        "config": config.to_dict(),
        "epoch": int(rest.get("epoch", 0)),
        "converted_from": {"path": str(path), "arch": arch},
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, checkpoint)
    return checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("convert", __doc__)
    parser.add_argument("reference", help="checkpoint written by the authors' Training/main.py (or a state dict)")
    parser.add_argument("out", help="where to write the decnn checkpoint")
    parser.add_argument("--arch", choices=list(REFERENCE_ZOO), help="their -a ARCH, if the checkpoint lacks 'arch'")
    args = parser.parse_args(argv)
    try:
        ckpt = convert(args.reference, args.out, args.arch)
    except ReferenceFormatError as e:
        print(f"error: {e}\nexample: {EXAMPLE}", file=sys.stderr)
        return 2
    print(f"{args.out}: {ckpt['converted_from']['arch']} as {ckpt['model_name']} {ckpt['model_kwargs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
