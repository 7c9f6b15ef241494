"""Measurements of a run: the time after queued device work, parameter bytes, top-k accuracy in percent."""

from __future__ import annotations

import time

import torch
from torch import nn

from decnn.common.meters import topk_correct


def synced_time(device: torch.device) -> float:
    """A timestamp taken after the device's queued work (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent, as ``{"top1": ..., "top5": ...}``."""
    correct = topk_correct(logits, labels, ks)
    return {f"top{k}": c.item() * 100 / len(labels) for k, c in zip(ks, correct)}
