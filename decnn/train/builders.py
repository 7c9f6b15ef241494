"""The builders of a training run (pycls style): device and process group, seeds, data sets, the model's
arguments, optimizer and schedule, the AMP dtype. Each is resolved once, here, for the trainer and for
``evaluate_checkpoint`` alike."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from timm.optim import param_groups_weight_decay
from torch import nn
from torch.utils.data import Dataset, Subset

from decnn.common.checkpoint import normalization_kwargs
from decnn.common.errors import ConfigError
from decnn.data import dataset_class, make_standin
from decnn.distributed.communicator import backend_for
from decnn.train.config import DataConfig, ModelConfig, OptimConfig, TrainingConfig
from decnn.train.transforms import eval_transform

TORCH_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # config.AMP_DTYPES but "none"


def pick_device(device: str, local_rank: int = 0) -> torch.device:
    """``train.device`` resolved: "auto" is CUDA when there is one."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda, but CUDA is not available")
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(device: str) -> tuple[int, int, torch.device]:
    """Join torchrun's process group when there is one; return (rank, world size, this process's device)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    target = pick_device(device, int(os.environ.get("LOCAL_RANK", 0)))
    if world_size == 1:
        return 0, 1, target
    cuda = target.type == "cuda"
    dist.init_process_group(backend_for(target), device_id=target if cuda else None)
    return dist.get_rank(), world_size, target


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)  # a few CUDA kernels have no deterministic twin
    torch.backends.cudnn.benchmark = not deterministic


def build_dataset(root: str | Path, split: str, transform, limit: int = 0) -> tuple[Dataset, int]:
    """A split (a fixed random subset of ``limit`` images when 0 < limit < its size) and its number of classes."""
    ds = dataset_class(root)(root, split, transform)
    if not 0 < limit < len(ds):
        return ds, ds.num_classes
    # Seeded apart from train.seed, so that runs with different seeds see the same images.
    keep = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:limit]
    return Subset(ds, keep.tolist()), ds.num_classes


def dataset_root(cfg: DataConfig) -> str | Path:
    return make_standin(cfg.root) if cfg.standin else cfg.root


def model_kwargs(cfg: ModelConfig, num_classes: int, normalize: tuple | None = None) -> dict:
    """The ``timm.create_model`` arguments a checkpoint records (the stem, its width and the init only where
    set).

    ``normalize``: the (mean, std) the training data is normalised with. Where it is not the model's default
    (an ImageNet folder tree, not Tiny-ImageNet) it is recorded as the model's ``pretrained_cfg``, which
    inference, shards and ``decnn.split`` read, so that they normalise as training did."""
    kwargs = {"num_classes": num_classes, "groups": cfg.groups, "width": cfg.width}
    if cfg.stem:
        kwargs["stem"] = cfg.stem
    if cfg.zero_init_last:
        kwargs["zero_init_last"] = True
    if cfg.stem_width:
        kwargs["stem_width"] = cfg.stem_width
    if normalize is not None:
        kwargs.update(normalization_kwargs(cfg.name, *normalize))
    return kwargs


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.decay_norm_and_bias:
        params = [{"params": list(model.parameters()), "weight_decay": cfg.weight_decay}]
    else:
        params = param_groups_weight_decay(model, cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(params, lr=cfg.lr)


def build_scheduler(cfg: TrainingConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Per-step linear warmup to ``optim.lr``, then cosine decay to ``schedule.min_lr`` or (``decay: step``)
    a tenth of the rate every ``step_epochs`` epochs, counted from the start as in the authors' code."""
    warmup = cfg.schedule.warmup_epochs * steps_per_epoch
    total = cfg.schedule.epochs * steps_per_epoch
    floor = cfg.schedule.min_lr / cfg.optim.lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule.decay == "step":
            return 0.1 ** (step // steps_per_epoch // cfg.schedule.step_epochs)
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_val_set(cfg: DataConfig) -> tuple[Dataset, int]:
    """The val split as training evaluates it (its eval transform, ``max_val_images``), and the classes."""
    root = dataset_root(cfg)
    stats = dataset_class(root)
    transform = eval_transform(cfg.image_size, stats.mean, stats.std, cfg.crop_pct)
    return build_dataset(root, "val", transform, cfg.max_val_images)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device``: None (fp32) off CUDA."""
    return TORCH_AMP_DTYPES.get(amp) if device.type == "cuda" else None
