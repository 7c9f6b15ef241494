"""Image transforms (torchvision.transforms.v2) on the datasets' uint8 [3, H, W] tensors, and batch mixing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from decnn.train.config import AugmentConfig


def train_transform(cfg: AugmentConfig, image_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Random-resized crop, optional flip and RandAugment, then float and normalise."""
    steps = [v2.RandomResizedCrop(image_size, scale=(cfg.scale_min, 1.0), antialias=True)]
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.randaugment:
        steps.append(v2.RandAugment(magnitude=cfg.randaugment))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def eval_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], crop_pct: float = 1.0
) -> v2.Compose:
    """Resize the short side to ``image_size / crop_pct`` and center-crop (a no-op for Tiny-ImageNet's 64x64
    at crop_pct 1; ImageNet's 256 -> 224 at 0.875), then float and normalise."""
    return v2.Compose([
        v2.Resize(round(image_size / crop_pct), antialias=True),
        v2.CenterCrop(image_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


def batch_mixer(cfg: AugmentConfig, num_classes: int) -> v2.Transform:
    """MixUp and/or CutMix on ``(images, labels)`` batches (labels become soft); the identity when both are off."""
    mixers = [
        mix(alpha=alpha, num_classes=num_classes)
        for mix, alpha in ((v2.MixUp, cfg.mixup_alpha), (v2.CutMix, cfg.cutmix_alpha))
        if alpha > 0
    ]
    return v2.RandomChoice(mixers) if mixers else v2.Identity()
