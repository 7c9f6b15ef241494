"""The whole model on one device, whatever its runtime: the 1-device baseline and the reference of ``--verify``."""

from __future__ import annotations

from collections.abc import Callable

from decnn.common.timing import Clock
from decnn.execution.messages import Array


class WholeStep:
    """``model(normalize(images))`` for one batch per step; its compute counts as one segment."""

    batches_per_step = 1

    def __init__(self, model: Callable[[Array], Array], normalize: Callable[[Array], Array]):
        self.model, self.normalize, self.clock = model, normalize, Clock()

    def step(self, inputs: list[Array]) -> list[Array]:
        out = []
        for images in inputs:
            with self.clock.part("normalize"):
                x = self.normalize(images)
            with self.clock.part("segment 0"):
                out.append(self.model(x))
        return out

    def reset_stats(self) -> None:
        self.clock.reset()

    def rank_stats(self) -> dict:
        return {"sent_bytes_per_point": [], "fp32_bytes_per_point": []}  # nothing exchanged
