"""Val loss and top-1/top-5 accuracy of a model (summed over the processes of a run), or of a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from decnn.common.checkpoint import check_architecture, load_model
from decnn.common.meters import topk_correct
from decnn.train.builders import amp_dtype, build_val_set, model_kwargs, pick_device
from decnn.train.config import TrainingConfig


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: torch.dtype | None = None,
             memory_format: torch.memory_format = torch.preserve_format) -> dict[str, float]:
    """Loss and top-1/top-5 accuracy (%) over the loader, summed over all processes when distributed."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1 hits, top-5 hits, count
    for images, labels in loader:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images).float()
        totals[0] += F.cross_entropy(logits, labels, reduction="sum")
        totals[1:3] += topk_correct(logits, labels, (1, 5))
        totals[3] += len(labels)
    if dist.is_initialized():
        dist.all_reduce(totals)
    loss, top1, top5, count = totals.tolist()
    return {"loss": loss / count, "top1": 100 * top1 / count, "top5": 100 * top5 / count}


def evaluate_checkpoint(path: str | Path, cfg: TrainingConfig) -> dict[str, float]:
    """Val loss and top-1/top-5 (%) of a checkpoint on ``cfg``'s val set, in one process."""
    device = pick_device(cfg.train.device)
    model, ckpt = load_model(path, expected_name=cfg.model.name)
    val_set, num_classes = build_val_set(cfg.data)
    check_architecture(ckpt, cfg.model.name, model_kwargs(cfg.model, num_classes), where=str(path))
    loader = DataLoader(val_set, cfg.data.batch_size, num_workers=cfg.data.workers)
    return evaluate(model.to(device), loader, device, amp_dtype(cfg.train.amp, device))
