"""The authors' model zoo (GitHub sysu-eda/Distributed-CNN-Inference, ``Training/models``) in decnn's terms.

``REFERENCE_ZOO`` names, for each architecture of the authors' ``main.py -a ARCH`` that decnn builds, the timm
model and arguments that give the same layers in the same order (and, with the authors' channel shuffle,
the same function). ``to_decnn_state_dict`` renames the parameters of a state dict saved by their code to
decnn's names; ``decnn convert`` (``decnn.train.convert``) turns their checkpoint files into decnn's.
"""

from __future__ import annotations

import re

import torch

from decnn.models.decoupled import DecoupledNet
from decnn.models.decoupled_resnet import DecoupledResNet
from decnn.models.decoupled_vgg import DecoupledVGG

IMAGENET_RESNET = {"stem": "imagenet", "num_classes": 1000}
PLAIN_VGG = {"groups": 1, "width": 1.0, "stem_width": 64}

# Their ImageNet accuracies (Training/README.md of the authors' repository), top-1 / top-5 (%), on the
# ILSVRC-2012 validation set; decnn has not reproduced them.
REFERENCE_ZOO: dict[str, tuple[str, dict]] = {
    "resnet34": ("decnn_resnet34", {"groups": 1, "width": 1.0, **IMAGENET_RESNET}),
    "resnet34_s3_x15": ("decnn_resnet34", {"groups": 4, "width": 1.5, **IMAGENET_RESNET}),
    "resnet34_s3_x175": ("decnn_resnet34", {"groups": 4, "width": 1.75, **IMAGENET_RESNET}),
    "resnet50": ("decnn_resnet50", {"groups": 1, "width": 1.0, **IMAGENET_RESNET}),
    "resnet50_s3_addchannel": ("decnn_resnet50", {"groups": 4, "width": 1.5, **IMAGENET_RESNET}),
    "resnet50_s3_addchannel175": ("decnn_resnet50", {"groups": 4, "width": 1.75, **IMAGENET_RESNET}),
    "vgg16_bn": ("decnn_vgg16_bn", {**PLAIN_VGG, "num_classes": 1000}),
    "vgg16_bn_s3_addchannel_v2": ("decnn_vgg16_bn", {"groups": 4, "width": 1.75, "num_classes": 1000}),
}
REFERENCE_ACCURACY = {
    "resnet34": (70.26, 89.678),
    "resnet34_s3_x15": (69.214, 88.698),
    "resnet34_s3_x175": (70.91, 89.656),
    "resnet50": (72.72, 90.90),
    "resnet50_s3_addchannel": (72.384, 90.682),
    "resnet50_s3_addchannel175": (73.79, 91.56),
    "vgg16_bn": (73.124, 91.354),
    "vgg16_bn_s3_addchannel_v2": (72.557, 90.918),
}
_BUFFER_ADDED_LATER = "num_batches_tracked"  # absent from checkpoints of PyTorch < 0.4.1


class ReferenceFormatError(ValueError):
    """A state dict that does not match the reference architecture it is said to be; the message says where."""


def _resnet_names(model: DecoupledResNet) -> dict[str, str]:
    """Their prefix -> decnn's: ``conv1``/``bn1`` the stem, ``layer{k}.{j}`` block j of stage k (decnn's
    segment k-1, as both shuffle after stages 1-3), ``fc``."""
    names = {"conv1": "stem.0", "bn1": "stem.1", "fc": "fc"}
    for s, segment in enumerate(model.segments):
        names.update({f"layer{s + 1}.{j}": f"segments.{s}.{j}" for j in range(len(segment))})
    return names


def _vgg_names(model: DecoupledVGG) -> dict[str, str]:
    """Their layer sequences -> decnn's: ``features.i`` (plain VGG) is the i-th layer of the whole chain;
    ``block0`` (decoupled) is the stem and segment 0, ``block1``/``block2`` segments 1/2, as both shuffle
    after convs 5 and 9; ``classifier.0/3/6`` are the MLP's three linear layers."""
    first = [f"stem.{i}" for i in range(len(model.stem))] + [f"segments.0.{i}" for i in range(len(model.segments[0]))]
    chain = first + [f"segments.{s}.{i}" for s in range(1, len(model.segments)) for i in range(len(model.segments[s]))]
    names = {"classifier.0": "fc1", "classifier.3": "mlp.fc2", "classifier.6": "fc"}
    names.update({f"features.{i}": path for i, path in enumerate(chain)})
    names.update({f"block0.{i}": path for i, path in enumerate(first)})
    for s in range(1, len(model.segments)):
        names.update({f"block{s}.{i}": f"segments.{s}.{i}" for i in range(len(model.segments[s]))})
    return names


def to_decnn_state_dict(state: dict[str, torch.Tensor], model: DecoupledNet) -> dict[str, torch.Tensor]:
    """Rename a state dict of the authors' code (``module.`` prefixes allowed) to fit ``model``.

    Raises ReferenceFormatError naming the first parameter that has no place in ``model`` or another shape.
    """
    state = {re.sub(r"^module\.", "", k): v for k, v in state.items()}
    prefixes = _resnet_names(model) if isinstance(model, DecoupledResNet) else _vgg_names(model)
    own = model.state_dict()
    renamed = {}
    for key, value in state.items():
        prefix, leaf = _split(key, prefixes)
        if prefix is None:
            raise ReferenceFormatError(f"{key}: no such layer in {type(model).__name__} (is --arch right?)")
        target = f"{prefixes[prefix]}.{leaf}"
        if target not in own or own[target].shape != value.shape:
            shape = tuple(own[target].shape) if target in own else None
            raise ReferenceFormatError(
                f"{key} {tuple(value.shape)} does not fit {target} {shape}: the checkpoint is another architecture"
            )
        renamed[target] = value
    missing = [k for k in own if k not in renamed and not k.endswith(_BUFFER_ADDED_LATER)]
    if missing:
        raise ReferenceFormatError(f"the checkpoint lacks {len(missing)} tensors of the model, e.g. {missing[0]}")
    for k in own:  # an old checkpoint's batch norms have not counted their batches: start from the model's
        renamed.setdefault(k, own[k])
    return renamed


def _split(key: str, prefixes: dict[str, str]) -> tuple[str | None, str]:
    """The longest known prefix of ``key`` (whole dotted parts) and the rest."""
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in prefixes:
            return prefix, ".".join(parts[n:])
    return None, key
