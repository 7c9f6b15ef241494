"""The spatial splits DeCNN is measured against (``--mode modnn|grid``) in the PyTorch runtime: every rank
holds the whole model and computes its tile of every feature map, exchanging halo pixels with the ranks that
hold them before each layer that reads a window (:mod:`decnn.spatial`); the pooled tiles meet on rank 0.
"""

from __future__ import annotations

import torch
from torch import nn

from decnn.distributed.communicator import Communicator
from decnn.inference.inputs import Normalize
from decnn.partition.spatial import TorchArrays, spatial_model
from decnn.spatial import DeviceProgram, Tiling, compile_programs
from decnn.spatial.executor import SpatialStep, Then


class CommTransport:
    """The communicator as the executor's transport (gloo or NCCL, every wait under the run's timeout)."""

    def __init__(self, comm: Communicator):
        self.comm, self.rank = comm, comm.rank

    def exchange(self, sends: list, receives: list) -> Then:
        """One all-to-all per step, the halos packed by peer in tag order: a collective call costs gloo less
        than a point-to-point pair per neighbour."""
        n = self.comm.world_size
        out_counts, in_counts = [0] * n, [0] * n
        for a, dst, _ in sends:
            out_counts[dst] += a.numel()
        for a, src, _ in receives:
            in_counts[src] += a.numel()
        flat = (torch.cat([a.reshape(-1) for a, _, _ in sorted(sends, key=lambda m: (m[1], m[2]))]) if sends
                else torch.empty(0, device=self.comm.device))
        arrived = torch.empty(sum(in_counts), device=self.comm.device)
        pending = self.comm.all_to_all(arrived, flat, in_counts, out_counts, async_op=True)

        def unpack() -> None:
            at = 0
            for a, _, _ in sorted(receives, key=lambda m: (m[1], m[2])):
                a.view(-1).copy_(arrived[at:at + a.numel()])
                at += a.numel()
        return Then(pending, unpack)

    def broadcast(self, array: torch.Tensor, root: int):
        return self.comm.broadcast(array, root, async_op=True)

    def reduce_sum(self, array: torch.Tensor, root: int):
        return Then(self.comm.reduce(array, root, async_op=True), lambda: array if self.rank == root else None)


class SpatialMode(SpatialStep):
    """This rank's tile of every feature map of ``model`` (its whole weights, prepared: BN folded into the
    convolutions, channels-last), cut by ``tiling``; the program for an image size is derived at its first
    batch (``image_size``: the run's, derived at once)."""

    def __init__(self, model: nn.Module, comm: Communicator, normalize: Normalize, tiling: Tiling, image_size: int):
        self.spatial, self.tiling = spatial_model(model.eval()), tiling
        for piece in self.spatial.pieces:
            piece.to(memory_format=torch.channels_last)
        self.module = nn.ModuleList([*self.spatial.pieces, self.spatial.pool, self.spatial.classifier])
        self.programs = {}
        pieces = [lambda inputs, p=p: p(*inputs) for p in self.spatial.pieces]
        super().__init__(self._program((image_size, image_size), comm.rank), pieces,
                         TorchArrays(comm.device, channels_last=True), CommTransport(comm), normalize,
                         self.spatial.pool, self.spatial.classifier)

    def _program(self, size: tuple[int, int], rank: int) -> DeviceProgram:
        if size not in self.programs:
            self.programs[size] = compile_programs(self.spatial.layout(size), self.tiling)[rank]
        return self.programs[size]

    @torch.inference_mode()
    def step(self, inputs: list[torch.Tensor]) -> list[torch.Tensor] | None:
        self.program = self._program(tuple(inputs[0].shape[-2:]), self.transport.rank)
        return super().step(inputs)
