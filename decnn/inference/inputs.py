"""What a run feeds the model: Tiny-ImageNet val images (with labels) or seeded synthetic images.

Images travel as uint8 ``[B, 3, H, W]`` (a quarter of the bytes of fp32); every device normalises its copy
with the model's mean and std, so the split and the monolithic model see bit-identical inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


class Normalize:
    """uint8 images -> float inputs: ``(x / 255 - mean) / std`` per channel; float inputs are already
    normalised and pass unchanged."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = torch.tensor(mean, device=device).view(1, -1, 1, 1) / std_t

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.is_floating_point():
            return images
        return images.to(torch.float32).mul_(self.scale).sub_(self.shift)


class SyntheticImages:
    """Random uint8 images, the same for a given seed and index on every run."""

    def __init__(self, num_images: int, image_size: int, seed: int = 0):
        self.num_images, self.image_size, self.seed = num_images, image_size, seed

    def __len__(self) -> int:
        return self.num_images

    def batch(self, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + start)
        return torch.randint(0, 256, (size, 3, self.image_size, self.image_size), generator=g, dtype=torch.uint8), None


class ValImages:
    """The first ``num_images`` of a Tiny-ImageNet-layout val split (the real set or the stand-in), resized to
    ``image_size`` exactly as the trainer's evaluation does, so a split run's top-1 matches ``--eval-only``."""

    def __init__(self, root: str | Path, num_images: int | None = None, image_size: int | None = None):
        from torchvision.transforms import v2

        from decnn.data import TinyImageNet  # only rank 0 reads images

        self.dataset = TinyImageNet(root, split="val")
        native = int(self.dataset[0][0].shape[-1])
        self.image_size = image_size or native
        if self.image_size != native:
            self.dataset.transform = v2.Resize(self.image_size, antialias=True)
        self.num_images = min(num_images or len(self.dataset), len(self.dataset))

    def __len__(self) -> int:
        return self.num_images

    def batch(self, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self.dataset[i] for i in range(start, start + size)]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def batch_sizes(num_images: int, batch: int) -> list[int]:
    """Batches of ``batch`` images; the last one holds the remainder."""
    return [batch] * (num_images // batch) + ([num_images % batch] if num_images % batch else [])
