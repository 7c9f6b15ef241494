"""The communicator as the executors' transport (:class:`decnn.execution.messages.Transport`), and torch's
tensor operations for them: gloo or NCCL, every wait bound by the run's timeout and naming a failed peer."""

from __future__ import annotations

import numpy as np
import torch

from decnn.distributed.communicator import Communicator
from decnn.execution.messages import Then

# The wire's element types (decnn.wire.exchange) as torch holds them: bf16's 16-bit words as bfloat16, which
# gloo carries and whose bytes are the same.
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "uint16": torch.bfloat16, "uint8": torch.uint8,
           "int64": torch.int64}


class CommTransport:
    """Broadcast, reduce and all-to-all through the communicator; a spatial step's halos in one all-to-all."""

    def __init__(self, comm: Communicator):
        self.comm, self.rank = comm, comm.rank

    def broadcast(self, array: torch.Tensor, root: int):
        return self.comm.broadcast(array, root, async_op=True)

    def reduce_sum(self, array: torch.Tensor, root: int) -> Then:
        return Then(self.comm.reduce(array, root, async_op=True), lambda: array if self.rank == root else None)

    def all_to_all(self, send: torch.Tensor, send_counts: list[int], recv: torch.Tensor, recv_counts: list[int]):
        return self.comm.all_to_all(recv, send, recv_counts, send_counts, async_op=True)

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
        pending = self.all_to_all(flat, out_counts, arrived, in_counts)

        def unpack() -> None:
            at = 0
            for a, _, _ in sorted(receives, key=lambda m: (m[1], m[2])):
                a.view(-1).copy_(arrived[at:at + a.numel()])
                at += a.numel()
        return Then(pending, unpack)


class TorchTensors:
    """Activations as tensors on ``device``; a new activation takes the layout of the one it follows, and a
    buffer ``full`` makes is channels-last where ``channels_last`` (oneDNN's fastest on CPU)."""

    def __init__(self, device: torch.device | str = "cpu", channels_last: bool = False):
        self.device = device
        self.layout = torch.channels_last if channels_last else torch.contiguous_format

    def full(self, shape: tuple[int, ...], fill: float) -> torch.Tensor:
        return torch.empty(shape, device=self.device, memory_format=self.layout).fill_(fill)

    def array(self, values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values)).to(self.device)

    def empty(self, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
        return torch.empty(shape, dtype=_DTYPES[dtype], device=self.device)

    def like(self, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        return torch.empty(shape, device=x.device, memory_format=layout)

    def take(self, x: torch.Tensor, index: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return torch.index_select(x, 1, index, out=out)

    def put(self, out: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> None:
        out.index_copy_(1, index, src)

    def numpy(self, array: torch.Tensor) -> np.ndarray:
        """On the CPU a view; from a GPU a copy."""
        return array.detach().view(torch.int16 if array.dtype == torch.bfloat16 else array.dtype).cpu().numpy()
