"""Measurements of a run: latency percentiles, memory, accuracy and agreement with the monolithic model."""

from __future__ import annotations

import time

import torch
from torch import nn

from decnn.train.meters import topk_correct


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


def agreement(logits: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Max |difference| of the logits (also relative to the largest |reference logit|) and the fraction of
    images with the same top-1 class."""
    diff = (logits - reference).abs().max().item()
    return {
        "max_abs_diff": diff,
        "max_rel_diff": diff / max(reference.abs().max().item(), 1e-30),
        "top1_agreement": (logits.argmax(1) == reference.argmax(1)).float().mean().item(),
    }
