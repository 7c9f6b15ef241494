"""Accuracy counting, agreement of two models' logits, and console progress: a tqdm bar on a terminal, plain
lines with ETA otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import torch
from tqdm import tqdm


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """How many samples have their label among the top-k logits, for each k (on the logits' device)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    return torch.stack([hit[:, :k].any(dim=1).sum() for k in ks])


def agreement(logits: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Max |difference| of the logits (also relative to the largest |reference logit|) and the fraction of
    images with the same top-1 class."""
    diff = (logits - reference).abs().max().item()
    return {
        "max_abs_diff": diff,
        "max_rel_diff": diff / max(reference.abs().max().item(), 1e-30),
        "top1_agreement": (logits.argmax(1) == reference.argmax(1)).float().mean().item(),
    }


class Progress:
    """Counts the steps of a loop of ``total``; shows nothing unless ``enabled`` (the main rank)."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.total, self.desc, self.done = total, desc, 0
        self.plain = enabled and not sys.stdout.isatty()
        self.bar = tqdm(total=total, desc=desc, file=sys.stdout, dynamic_ncols=True, leave=False,
                        disable=not enabled or self.plain)
        self.start = time.perf_counter()

    def update(self, info: dict[str, str] | None = None) -> None:
        """One step done; ``info`` (e.g. loss and lr, already formatted) is shown when given."""
        self.done += 1
        self.bar.update()
        if info is None:
            return
        self.bar.set_postfix(info, refresh=False)
        if self.plain:
            elapsed = time.perf_counter() - self.start
            eta = elapsed / self.done * (self.total - self.done)
            fields = " ".join(f"{k} {v}" for k, v in info.items())
            print(f"{self.desc} {self.done}/{self.total} {fields} eta {format_seconds(eta)}", flush=True)

    def close(self) -> None:
        self.bar.close()


def format_seconds(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}"
