"""The baselines DeCNN is compared with: the whole model in one process, and data parallelism.

``single``: the reference; one process runs the whole model (no process group traffic at all).
``data``: every rank holds the whole model and takes its own batch. Per step rank 0 scatters one batch to
each rank and gathers the logits: the best throughput, no latency gain, the full model's memory on each.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from decnn.comm import Communicator
from decnn.inference.inputs import Normalize


class SingleMode:
    """The whole model on this process, one batch per step."""

    name = "single"
    batches_per_step = 1

    def __init__(self, model: nn.Module, normalize: Normalize):
        self.model, self.normalize = model, normalize
        self.compute_s = 0.0

    @torch.inference_mode()
    def step(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        start = time.perf_counter()
        out = [self.model(self.normalize(x)) for x in inputs]
        self.compute_s += time.perf_counter() - start
        return out

    def reset_stats(self) -> None:
        self.compute_s = 0.0

    def rank_stats(self) -> dict:
        return {"compute_s": self.compute_s}


class DataMode:
    """Data parallelism: one batch per rank per step (scatter the inputs, gather the logits)."""

    name = "data"

    def __init__(self, model: nn.Module, comm: Communicator, normalize: Normalize):
        self.model, self.comm, self.normalize = model, comm, normalize
        self.batches_per_step = comm.world_size
        self.compute_s = 0.0

    @torch.inference_mode()
    def step(self, inputs: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """``inputs``: up to one batch per rank (rank 0's); batches are padded to one shape for the scatter."""
        comm = self.comm
        shape = max((x.shape for x in inputs), key=lambda s: s[0])
        mine = torch.empty(shape, dtype=torch.uint8, device=comm.device)
        padded = None
        if comm.rank == 0:
            padded = [torch.zeros(shape, dtype=torch.uint8, device=comm.device) for _ in range(comm.world_size)]
            for buf, x in zip(padded, inputs):
                buf[: len(x)] = x
        comm.scatter(mine, padded)
        start = time.perf_counter()
        logits = self.model(self.normalize(mine))
        self.compute_s += time.perf_counter() - start
        gathered = [torch.empty_like(logits) for _ in range(comm.world_size)] if comm.rank == 0 else None
        comm.gather(logits, gathered)
        if comm.rank != 0:
            return None
        return [out[: len(x)] for out, x in zip(gathered, inputs)]

    def reset_stats(self) -> None:
        self.compute_s = 0.0

    def rank_stats(self) -> dict:
        return {"compute_s": self.compute_s}
