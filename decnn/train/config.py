"""The typed training config: nested frozen dataclasses, read from YAML, overridden as ``section.key=value``.

``load_config`` is the only way in: it merges a YAML file (or a checkpoint's config) with command-line
overrides, checks every key and type, validates ranges once, and returns a frozen ``TrainingConfig``.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from decnn.common.errors import ConfigError
from decnn.models import STEMS, model_names

OPTIMIZERS = ("sgd", "adamw")
DECAYS = ("cosine", "step")
AMP_DTYPES = ("none", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "decnn_resnet34"  # any registered decnn_* model
    groups: int = 4  # branches; 1 = a plain ResNet
    width: float = 1.5  # channel multiplier of every stage
    stem: str = "tiny"  # ResNets: "tiny" (3x3/1, for 64x64 inputs) or "imagenet" (7x7/2 + max-pool); "" for the VGG
    zero_init_last: bool = False  # ResNets: zero each block's last BN scale (the authors' code sets all to 1)
    stem_width: int = 0  # the VGG: channels of its first conv; 0 = the model's default (96, the authors' x1.75)


@dataclass(frozen=True)
class DataConfig:
    root: str = "data/tiny-imagenet-200"
    standin: bool = False  # write the offline digits stand-in at root if it is missing
    image_size: int = 64  # side of the network input (train crops and eval resize)
    crop_pct: float = 1.0  # eval: resize to image_size / crop_pct, then center-crop (ImageNet: 0.875)
    batch_size: int = 128  # per process
    workers: int = 4  # data-loading processes per training process
    max_train_images: int = 0  # a fixed random subset of this size; 0 = all
    max_val_images: int = 0


@dataclass(frozen=True)
class AugmentConfig:
    scale_min: float = 0.35  # smallest crop area of RandomResizedCrop, as a fraction of the image
    hflip: bool = True
    randaugment: int = 0  # RandAugment magnitude; 0 = off
    mixup_alpha: float = 0.0  # 0 = off; with cutmix_alpha too, each batch picks one of the two
    cutmix_alpha: float = 0.0
    label_smoothing: float = 0.1


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"  # "sgd" or "adamw"
    lr: float = 0.1  # peak learning rate, reached after warmup
    momentum: float = 0.9  # SGD momentum (AdamW uses its default betas)
    nesterov: bool = True
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False  # also decay biases and norm weights (the authors' code does)
    clip_grad_norm: float = 0.0  # 0 = off


@dataclass(frozen=True)
class ScheduleConfig:
    epochs: int = 100
    warmup_epochs: int = 5  # linear warmup from lr / (warmup steps) to lr, then the decay
    decay: str = "cosine"  # "cosine" to min_lr, or "step": lr / 10 every step_epochs epochs
    min_lr: float = 0.0  # where the cosine ends
    step_epochs: int = 30


@dataclass(frozen=True)
class LoopConfig:
    """The ``train:`` section: how the loop runs."""

    seed: int = 0
    deterministic: bool = False  # deterministic kernels (slower on CUDA); CPU runs are reproducible anyway
    device: str = "auto"  # "auto" = CUDA when available
    amp: str = "bf16"  # autocast dtype on CUDA ("none", "bf16", "fp16"); CPU always runs fp32
    channels_last: bool = True  # CUDA only
    resume: str = ""  # a last.pt to continue from, in its own run folder


@dataclass(frozen=True)
class RunConfig:
    name: str = ""  # run folder name; "" = model, groups, width, stem and a timestamp
    out_dir: str = "runs/train"
    log_every: int = 50  # steps between train-loss logs and console lines


@dataclass(frozen=True)
class TrainingConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def load_config(
    path: str | Path | None = None, overrides: typing.Sequence[str] = (), base: dict | None = None
) -> TrainingConfig:
    """Build the config from ``path`` (YAML) or ``base`` (a saved config dict), then ``key=value`` overrides."""
    if path is not None:
        with open(path) as f:
            base = _parse(f, where=str(path)) or {}
        if not isinstance(base, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(base).__name__}")
    values = _nested(base or {}, where=str(path or "config"))
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep:
            raise ConfigError(f"override {override!r} is not of the form section.key=value")
        section, _, name = key.partition(".")
        _field(section, name, where=f"override {override!r}")
        values.setdefault(section, {})[name] = text if _types(section)[name] is str else _parse(text, override)
    cfg = TrainingConfig(**{s: _section(s, v) for s, v in values.items()})
    validate(cfg)
    return cfg


def _parse(stream, where: str):
    try:
        return yaml.safe_load(stream)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None


def _types(section: str) -> dict[str, type]:
    return typing.get_type_hints(typing.get_type_hints(TrainingConfig)[section])


def _field(section: str, name: str | None, where: str) -> None:
    """Raise a ConfigError naming the valid keys unless ``section`` (and ``section.name``) exists."""
    sections = list(typing.get_type_hints(TrainingConfig))
    if section not in sections:
        raise ConfigError(f"{where}: unknown section {section!r}{_suggest(section, sections)}")
    names = list(_types(section))
    if name is not None and name not in names:
        raise ConfigError(f"{where}: unknown key {section}.{name}{_suggest(name, names)}")


def _suggest(word: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(word, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; valid: {', '.join(valid)}"


def _nested(base: dict, where: str) -> dict[str, dict]:
    values = {}
    for section, keys in base.items():
        _field(section, None, where)
        if not isinstance(keys, dict):
            raise ConfigError(f"{where}: section {section!r} must be a mapping of keys, got {keys!r}")
        for name in keys:
            _field(section, name, where)
        values[section] = dict(keys)
    return values


def _section(section: str, values: dict):
    types = _types(section)
    converted = {name: _convert(f"{section}.{name}", value, types[name]) for name, value in values.items()}
    return typing.get_type_hints(TrainingConfig)[section](**converted)


def _convert(key: str, value, kind: type):
    """Check ``value`` against the field's type; ints pass as floats, and YAML's '1e-3' strings as numbers."""
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise ConfigError(f"{key} must be {kind.__name__}, got {value!r} ({type(value).__name__})")
    return value


def validate(cfg: TrainingConfig) -> None:
    """Check value ranges and choices once; raise ConfigError naming the first bad value."""
    m, d, a, o, s, t, r = cfg.model, cfg.data, cfg.augment, cfg.optim, cfg.schedule, cfg.train, cfg.run
    checks = [
        ("model.name", m.name in model_names(), f"one of {model_names()}"),
        ("model.groups", m.groups >= 1, ">= 1"),
        ("model.width", m.width > 0, "> 0"),
        ("model.stem", m.stem in (*STEMS, ""), f"one of {STEMS}, or '' for a model with one stem (decnn_vgg16_bn)"),
        ("model.stem_width", m.stem_width >= 0 and (m.stem_width == 0 or "vgg" in m.name),
         ">= 1 for decnn_vgg16_bn (e.g. 64 for the plain VGG-16), 0 otherwise"),
        ("data.image_size", d.image_size >= 8, ">= 8"),
        ("data.crop_pct", 0 < d.crop_pct <= 1, "in (0, 1]"),
        ("data.batch_size", d.batch_size >= 1, ">= 1"),
        ("data.workers", d.workers >= 0, ">= 0"),
        ("data.max_train_images", d.max_train_images >= 0, ">= 0 (0 = all)"),
        ("data.max_val_images", d.max_val_images >= 0, ">= 0 (0 = all)"),
        ("augment.scale_min", 0 < a.scale_min <= 1, "in (0, 1]"),
        ("augment.randaugment", 0 <= a.randaugment <= 30, "in [0, 30] (0 = off)"),
        ("augment.mixup_alpha", a.mixup_alpha >= 0, ">= 0 (0 = off)"),
        ("augment.cutmix_alpha", a.cutmix_alpha >= 0, ">= 0 (0 = off)"),
        ("augment.label_smoothing", 0 <= a.label_smoothing < 1, "in [0, 1)"),
        ("optim.name", o.name in OPTIMIZERS, f"one of {OPTIMIZERS}"),
        ("optim.lr", o.lr > 0, "> 0"),
        ("optim.momentum", 0 <= o.momentum < 1, "in [0, 1)"),
        ("optim.nesterov", not (o.nesterov and o.name == "sgd" and o.momentum == 0), "false when momentum is 0"),
        ("optim.weight_decay", o.weight_decay >= 0, ">= 0"),
        ("optim.clip_grad_norm", o.clip_grad_norm >= 0, ">= 0 (0 = off)"),
        ("schedule.epochs", s.epochs >= 1, ">= 1"),
        ("schedule.warmup_epochs", 0 <= s.warmup_epochs <= s.epochs, f"in [0, schedule.epochs={s.epochs}]"),
        ("schedule.decay", s.decay in DECAYS, f"one of {DECAYS}"),
        ("schedule.min_lr", 0 <= s.min_lr <= o.lr, f"in [0, optim.lr={o.lr}]"),
        ("schedule.step_epochs", s.step_epochs >= 1, ">= 1"),
        ("train.device", t.device in DEVICES, f"one of {DEVICES}"),
        ("train.amp", t.amp in AMP_DTYPES, f"one of {AMP_DTYPES}"),
        ("run.log_every", r.log_every >= 1, ">= 1"),
        ("run.name", "/" not in r.name and r.name not in (".", ".."), "a plain folder name"),
    ]
    for key, ok, expected in checks:
        if not ok:
            section, name = key.split(".")
            value = getattr(getattr(cfg, section), name)
            raise ConfigError(f"{key}={value!r} is invalid: must be {expected}")
