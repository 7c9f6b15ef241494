"""Which model a run uses, resolved and checked before any process group starts.

Every rank builds the same model from the spec (the checkpoint, or a seeded random init) and keeps only
what its mode needs; the spec itself is small enough to be checked in the launching process.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from decnn.common.checkpoint import CheckpointError, load_checkpoint, load_model
from decnn.common.errors import ConfigError, option
from decnn.deploy import shards
from decnn.inference.settings import InferConfig
from decnn.models import DecoupledModelError, verify_decoupled
from decnn.partition import Branch, Placement, extract_branch
from decnn.partition.spatial import spatial_model
from decnn.wire.spatial import SpatialError, Tiling, compile_programs

DEFAULT_MODEL = "decnn_resnet34"


@dataclass(frozen=True)
class ModelSpec:
    """A model by timm name and kwargs, with weights from ``checkpoint`` (a file, or a folder of per-device
    shards exported for ``exported_placement``), from ``module`` (passed in by the caller), or a random init
    seeded by ``seed``."""

    name: str
    kwargs: dict
    checkpoint: str | None
    seed: int
    groups: int
    width: float
    stem: str | None  # None for a model with one stem only (the VGG)
    num_classes: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    exported_placement: tuple[tuple[int, ...], ...] | None = None
    module: nn.Module | None = None
    trained: dict | None = None  # the checkpoint's training (RunRecord's trained_run, trained_top1, trained_top5)

    def build(self, device: torch.device | None = None) -> nn.Module:
        """The whole model in eval mode (the same weights on every rank); from shards, all their fp32 branches."""
        if self.exported_placement is not None:
            try:
                model = shards.ShardedModel(self.checkpoint)
            except shards.ShardError as e:
                raise ConfigError(str(e)) from None
        elif self.module is not None:
            model = self.module
        elif self.checkpoint is not None:
            model, _ = load_model(self.checkpoint, expected_name=self.name)
        else:
            torch.manual_seed(self.seed)
            model = _randomize_batch_norms(timm.create_model(self.name, **self.kwargs))
        return model.to(device or "cpu").eval()

    def build_branch(self, placement: Placement, device: int) -> Branch:
        """Device ``device``'s branch in eval mode; from shards or a checkpoint, without the other weights."""
        try:
            if self.exported_placement is not None:
                return shards.load_shard_branch(self.checkpoint, placement, device)
            if self.checkpoint is not None:
                return shards.load_checkpoint_branch(self.checkpoint, placement, device)
        except (shards.ShardError, CheckpointError) as e:
            raise ConfigError(str(e)) from None
        return extract_branch(self.build(), placement, device)

    def placement(self, spec: str | None, num_devices: int) -> Placement:
        """The explicit placement ``spec`` (e.g. "0,1,2/3"), else the shards', else the most balanced one (any
        device count from 1 to the groups: 4 groups on 3 devices hold 2/1/1)."""
        if num_devices > self.groups:
            raise ConfigError(f"{self.name} with groups={self.groups} splits over at most {self.groups} devices, "
                              f"not {num_devices}: each device needs a group of its own")
        try:
            if spec:
                placement = Placement.parse(self.groups, spec)
            elif self.exported_placement is not None:
                placement = Placement(self.groups, self.exported_placement)
            else:
                placement = Placement.balanced(self.groups, num_devices)
        except ValueError as e:
            reason = str(e).split("; use")[0].split(", e.g.")[0]  # drop Placement's own hint: ours follows
            raise ConfigError(f"{option('placement', spec) if spec else 'placement'}: {reason}; "
                              f"e.g. {option('placement', _example_placement(self.groups, num_devices))}") from None
        if placement.num_devices != num_devices:
            raise ConfigError(f"{option('placement', spec or placement.as_lists())} names {placement.num_devices} "
                              f"devices, but the run has {num_devices}; "
                              f"e.g. {option('placement', _example_placement(self.groups, num_devices))}")
        if self.exported_placement is not None:
            try:
                shards.check_shards(self.checkpoint, placement)
            except shards.ShardError as e:
                raise ConfigError(str(e)) from None
        return placement


    def check_tiling(self, tiling: Tiling, image_size: int) -> None:
        """ConfigError unless a spatial split of ``image_size`` images can cut this model with ``tiling``."""
        try:
            if self.module is not None:
                model = self.module
            else:
                with torch.device("meta"):  # the structure and the map sizes are all that is read here
                    model = timm.create_model(self.name, **self.kwargs).eval()
            compile_programs(spatial_model(model).layout((image_size, image_size)), tiling)
        except SpatialError as e:
            raise ConfigError(f"{option('mode', tiling.mode)} over {tiling.devices} devices cannot split {self.name} "
                              f"at {image_size}x{image_size}: {e}") from None


def _example_placement(groups: int, num_devices: int) -> str:
    """A valid ``--placement`` for ``groups`` on ``num_devices``: one group each, the rest on the first device."""
    first = groups - (num_devices - 1)
    devices = [list(range(first))] + [[g] for g in range(first, groups)]
    return "/".join(",".join(map(str, d)) for d in devices)


@torch.no_grad()
def _randomize_batch_norms(model: nn.Module) -> nn.Module:
    """Random BN scales and statistics (from the global seed): the init's identical scales and zero statistics
    (or zeroed last-BN scales with zero_init_last_bn) would make --verify check far less than the whole model."""
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
    exported, trained = None, None
    if cfg.checkpoint is not None and shards.is_shard_dir(cfg.checkpoint):
        try:
            manifest = shards.read_manifest(cfg.checkpoint)
        except shards.ShardError as e:
            raise ConfigError(str(e)) from None
        if manifest.get("mode", "branch") != "branch":
            raise ConfigError(f"{cfg.checkpoint} is a {manifest['mode']} export for devices without torch: run it "
                              f"with `decnn edge {cfg.checkpoint}`, or give {option('checkpoint')} the checkpoint")
        if cfg.mode != "branch":
            raise ConfigError(f"{cfg.checkpoint} holds branches for mode branch; mode {cfg.mode} needs the whole "
                              "model: give the checkpoint")
        name, kwargs, trained_size = manifest["model_name"], dict(manifest["model_kwargs"]), manifest["image_size"]
        exported = tuple(tuple(dev) for dev in manifest["placement"])
        if cfg.model is not None and cfg.model != name:
            raise ConfigError(f"{cfg.checkpoint} holds a {name} model, not the requested {cfg.model}")
    elif cfg.checkpoint is not None:
        try:
            ckpt = load_checkpoint(cfg.checkpoint)
        except (FileNotFoundError, CheckpointError) as e:
            raise ConfigError(str(e)) from None
        name, kwargs = ckpt["model_name"], dict(ckpt["model_kwargs"])
        trained_size = ckpt["config"]["data"]["image_size"]  # val images are resized to it, as in training
        trained = training_of(cfg.checkpoint, ckpt)
        if cfg.model is not None and cfg.model != name:
            raise ConfigError(f"{cfg.checkpoint} holds a {name} model, not the requested {cfg.model}")
    else:
        name, kwargs, trained_size = cfg.model or DEFAULT_MODEL, given, None
        if name not in timm.list_models():
            raise ConfigError(f"unknown model {name!r}; DeCNN models: {timm.list_models('decnn_*')}")
    try:
        with torch.device("meta"):  # the structure is all that is read here
            model = timm.create_model(name, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot build {name} with {kwargs}: {e}") from None
    return dataclasses.replace(describe(model, cfg, name, kwargs, given, trained_size, exported), trained=trained)


def training_of(path: str, ckpt: dict) -> dict:
    """Which training run wrote a checkpoint (the train.py run folder it sits in, which holds the run's
    config.yaml) and its best val accuracy: what the run's HPARAMS row shows beside its own numbers."""
    folder = Path(path).parent
    best = {k: ckpt.get(f"best_{k}") for k in ("top1", "top5")}
    return {"trained_run": str(folder) if (folder / "config.yaml").is_file() else None,
            **{f"trained_{k}": float(v) for k, v in best.items() if v is not None and math.isfinite(v)}}


def describe(model: nn.Module, cfg: InferConfig, name: str, kwargs: dict, given: dict | None = None,
             trained_size: int | None = None, exported: tuple | None = None,
             module: nn.Module | None = None) -> ModelSpec:
    """The spec of ``model`` (built from ``name`` and ``kwargs``, or passed in as ``module``)."""
    given = given or {}
    try:
        verify_decoupled(model)
    except DecoupledModelError as e:
        raise ConfigError(f"{name}: {e}") from None
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
        exported_placement=exported,
        module=module,
    )
