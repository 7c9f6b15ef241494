"""DeCNN split inference in the PyTorch runtime: each rank runs its branch (a :class:`decnn.partition.Branch`,
or its ONNX graphs) through :mod:`decnn.execution.branch`, over the communicator. Per batch: one broadcast of the
uint8 input from rank 0, one all-to-all per shuffle point, one reduce of the partial logits onto rank 0.
"""

from __future__ import annotations

import torch

from decnn.distributed.communicator import Communicator
from decnn.distributed.transport import CommTransport, TorchTensors
from decnn.execution.branch import BranchStep
from decnn.inference.inputs import Normalize
from decnn.inference.tensor_codecs import Codec
from decnn.partition import Branch


class BranchMode(BranchStep):
    """This rank's branch driven through the run, ``in_flight`` batches at a time (``check``: --check-exchange)."""

    def __init__(self, branch: Branch, comm: Communicator, codec: Codec, normalize: Normalize, in_flight: int = 1,
                 check: bool = False):
        self.module, self.comm = branch, comm
        segments = [lambda x, i=i: branch.segment(i, x) for i in range(len(branch.segments))]
        super().__init__(segments, branch.head, branch.finish if comm.rank == 0 else None,
                         branch.plans, codec, TorchTensors(comm.device),
                         CommTransport(comm), normalize, in_flight, check)

    @torch.inference_mode()
    def step(self, inputs: list[torch.Tensor]) -> list[torch.Tensor] | None:
        return super().step(inputs)
