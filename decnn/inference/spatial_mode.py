"""The spatial splits DeCNN is measured against (``--mode modnn|grid``) in the PyTorch runtime: every rank
holds the whole model and computes its tile of every feature map, exchanging halo pixels with the ranks that
hold them before each layer that reads a window (:mod:`decnn.wire.spatial`); the pooled tiles meet on rank 0.
"""

from __future__ import annotations

import torch
from torch import nn

from decnn.distributed.communicator import Communicator
from decnn.distributed.transport import CommTransport, TorchTensors
from decnn.execution.spatial import SpatialStep
from decnn.inference.inputs import Normalize
from decnn.partition.spatial import spatial_model
from decnn.wire.spatial import DeviceProgram, Tiling, compile_programs


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
                         TorchTensors(comm.device, channels_last=True), CommTransport(comm), normalize,
                         self.spatial.pool, self.spatial.classifier)

    def _program(self, size: tuple[int, int], rank: int) -> DeviceProgram:
        if size not in self.programs:
            self.programs[size] = compile_programs(self.spatial.layout(size), self.tiling)[rank]
        return self.programs[size]

    @torch.inference_mode()
    def step(self, inputs: list[torch.Tensor]) -> list[torch.Tensor] | None:
        self.program = self._program(tuple(inputs[0].shape[-2:]), self.transport.rank)
        return super().step(inputs)
