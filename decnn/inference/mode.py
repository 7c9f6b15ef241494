"""What every way of running a model across the ranks implements.

A :class:`Mode` (single, data, branch, pipeline) owns the prepared module this rank runs and a ``step``
that runs a list of uint8 batches across the ranks. It needs nothing of the timed loop: the runner and a
persistent runtime call the same ``step``. Where a rank's time goes is measured by its
:class:`~decnn.common.timing.Clock`.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from decnn.common.timing import Clock


class Mode(Protocol):
    """One rank's part of a run."""

    batches_per_step: int  # how many batches one ``step`` takes
    module: nn.Module  # the prepared module this rank runs (its branch, its stage, or the whole model)
    clock: Clock

    def step(self, inputs: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """Run uint8 batches (meaningful on rank 0; same-shaped buffers elsewhere); logits on rank 0."""

    def reset_stats(self) -> None:
        """Start counting afresh (after the warm-up): the clock and the mode's own counters."""

    def rank_stats(self) -> dict:
        """The mode's own counters for the report (bytes sent and the like)."""
