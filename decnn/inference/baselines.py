"""The baselines DeCNN is compared with: the whole model in one process, and data parallelism.

``single``: the reference; one process runs the whole model (no process group traffic at all).
``data``: every rank holds the whole model and takes its own batch. Per step rank 0 scatters one batch to
each rank and gathers the logits: the best throughput, no latency gain, the full model's memory on each.
"""

from __future__ import annotations

import torch
from torch import nn

from decnn.common.timing import Clock
from decnn.distributed.communicator import Communicator
from decnn.execution.whole import WholeStep
from decnn.inference.inputs import Normalize


class SingleMode(WholeStep):
    """The whole model on this process, one batch per step (its compute counts as one segment)."""

    def __init__(self, model: nn.Module, normalize: Normalize):
        super().__init__(torch.inference_mode()(model), normalize)
        self.module = model


class DataMode:
    """Data parallelism: one batch per rank per step (scatter the inputs, gather the logits)."""

    def __init__(self, model: nn.Module, comm: Communicator, normalize: Normalize):
        self.module, self.comm, self.normalize = model, comm, normalize
        self.batches_per_step = comm.world_size
        self.clock = Clock()

    @torch.inference_mode()
    def step(self, inputs: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """``inputs``: up to one batch per rank (rank 0's); batches are padded to one shape for the scatter."""
        comm, clock = self.comm, self.clock
        shape = max((x.shape for x in inputs), key=lambda s: s[0])
        mine = torch.empty(shape, dtype=torch.uint8, device=comm.device)
        padded = None
        if comm.rank == 0:
            padded = [torch.zeros(shape, dtype=torch.uint8, device=comm.device) for _ in range(comm.world_size)]
            for buf, x in zip(padded, inputs):
                buf[: len(x)] = x
        clock.issue("scatter", lambda: comm.scatter(mine, padded, async_op=True)).wait()
        with clock.part("normalize"):
            x = self.normalize(mine)
        with clock.part("segment 0"):
            logits = self.module(x)
        gathered = [torch.empty_like(logits) for _ in range(comm.world_size)] if comm.rank == 0 else None
        clock.issue("gather", lambda: comm.gather(logits, gathered, async_op=True)).wait()
        if comm.rank != 0:
            return None
        return [out[: len(x)] for out, x in zip(gathered, inputs)]

    def reset_stats(self) -> None:
        self.clock.reset()

    def rank_stats(self) -> dict:
        return {}
