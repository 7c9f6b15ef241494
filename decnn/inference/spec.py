"""Which model a run uses, resolved and checked before any process group starts.

Every rank builds the same model from the spec (the checkpoint, or a seeded random init) and keeps only
what its mode needs; the spec itself is small enough to be checked in the launching process.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
from torch import nn

import decnn  # noqa: F401  (registers the models with timm)
from decnn.inference.config import ConfigError, InferConfig
from decnn.partition import Placement
from decnn.train.checkpoint import CheckpointError, load_checkpoint, load_model

DEFAULT_MODEL = "decnn_resnet34"


@dataclass(frozen=True)
class ModelSpec:
    """A model by timm name and kwargs, with weights from ``checkpoint`` or a random init seeded by ``seed``."""

    name: str
    kwargs: dict
    checkpoint: str | None
    seed: int
    groups: int
    width: float
    stem: str
    num_classes: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def build(self, device: torch.device | None = None) -> nn.Module:
        """The whole model in eval mode (the same weights on every rank)."""
        if self.checkpoint is not None:
            model, _ = load_model(self.checkpoint, expected_name=self.name)
        else:
            torch.manual_seed(self.seed)
            model = _randomize_batch_norms(timm.create_model(self.name, **self.kwargs))
        return model.to(device or "cpu").eval()

    def placement(self, spec: str | None, num_devices: int) -> Placement:
        """The explicit placement ``spec`` (e.g. "0,1,2/3"), else the groups spread evenly."""
        if num_devices > self.groups:
            raise ConfigError(f"{self.name} with groups={self.groups} splits over at most {self.groups} devices, "
                              f"not {num_devices}: each device needs a group of its own")
        try:
            placement = Placement.parse(self.groups, spec) if spec else Placement.even(self.groups, num_devices)
        except ValueError as e:
            reason = str(e).split("; use")[0].split(", e.g.")[0]  # drop the hint in Python syntax: ours follows
            raise ConfigError(f"{'--placement ' + spec if spec else 'placement'}: {reason}; "
                              f"e.g. --placement {_example_placement(self.groups, num_devices)}") from None
        if placement.num_devices != num_devices:
            raise ConfigError(f"--placement {spec} names {placement.num_devices} devices, but the run has "
                              f"{num_devices}; e.g. --placement {_example_placement(self.groups, num_devices)}")
        return placement


def _example_placement(groups: int, num_devices: int) -> str:
    """A valid ``--placement`` for ``groups`` on ``num_devices``: one group each, the rest on the first device."""
    first = groups - (num_devices - 1)
    devices = [list(range(first))] + [[g] for g in range(first, groups)]
    return "/".join(",".join(map(str, d)) for d in devices)


@torch.no_grad()
def _randomize_batch_norms(model: nn.Module) -> nn.Module:
    """Random BN scales and statistics (from the global seed): the init zeroes each block's last BN scale,
    which would leave the residual branches silent and make --verify check far less than the whole model."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.0)
            m.bias.normal_(0.0, 0.1)
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def resolve_model(cfg: InferConfig) -> ModelSpec:
    """Check the model settings (and the checkpoint) and describe the model; raises ConfigError."""
    given = {k: v for k, v in (("groups", cfg.groups), ("width", cfg.width), ("stem", cfg.stem)) if v is not None}
    if cfg.checkpoint is not None:
        try:
            ckpt = load_checkpoint(cfg.checkpoint)
        except (FileNotFoundError, CheckpointError) as e:
            raise ConfigError(str(e)) from None
        name, kwargs = ckpt["model_name"], dict(ckpt["model_kwargs"])
        trained_size = ckpt["config"]["data"]["image_size"]  # val images are resized to it, as in training
        if cfg.model is not None and cfg.model != name:
            raise ConfigError(f"{cfg.checkpoint} holds a {name} model, not the requested {cfg.model}")
    else:
        name, kwargs, trained_size = cfg.model or DEFAULT_MODEL, given, None
        if name not in timm.list_models():
            raise ConfigError(f"unknown model {name!r}; DeCNN models: {timm.list_models('decnn_*')}")
    try:
        model = timm.create_model(name, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot build {name} with {kwargs}: {e}") from None
    required = ("stem", "segments", "shuffles", "fc", "groups", "width", "stem_kind")
    if any(not hasattr(model, a) for a in required):
        raise ConfigError(f"{name} does not expose the decoupled structure ({', '.join(required)})")
    actual = {
        "groups": model.groups,
        "width": model.width,
        "stem": model.stem_kind,
    }
    clash = [f"{k}={actual[k]!r}, not the requested {v!r}" for k, v in given.items() if actual[k] != v]
    if clash and cfg.checkpoint is not None:
        raise ConfigError(f"{cfg.checkpoint} holds a {name} with {', '.join(clash)}")
    actual.update(given)
    pcfg = model.pretrained_cfg
    return ModelSpec(
        name=name,
        kwargs=kwargs,
        checkpoint=cfg.checkpoint,
        seed=cfg.seed,
        **actual,
        num_classes=model.num_classes,
        input_size=trained_size or int(pcfg["input_size"][-1]),
        mean=tuple(pcfg["mean"]),
        std=tuple(pcfg["std"]),
    )
