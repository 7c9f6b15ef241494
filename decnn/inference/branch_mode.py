"""DeCNN split inference: each rank runs its branch; the only place a Branch meets the communicator.

Per batch: one broadcast of the uint8 input from rank 0, one ``all_to_all`` per shuffle point, one
``reduce`` of the partial logits onto rank 0. Nothing else crosses between devices.

Overlap (Scheme 3 of the paper): ``in_flight`` batches advance segment by segment. For segment i and
batch m the rank waits for m's pending exchange, computes segment i of m and starts m's next exchange
asynchronously, then moves on to batch m+1, whose compute hides m's exchange. The collectives are issued
in the same order on every rank, so the results are those of the batches run one at a time.
"""

from __future__ import annotations

import numpy as np
import torch

from decnn.checksum import block_crcs, check_blocks
from decnn.distributed.communicator import Communicator
from decnn.distributed.faults import corrupts_next_block, flip_bytes
from decnn.inference.codec import Codec
from decnn.inference.inputs import Normalize
from decnn.partition import Branch, ExchangePlan
from decnn.timing import Clock, ExchangeCounters, Timed


class ShuffleExchange:
    """One shuffle point's all-to-all for one in-flight batch, with buffers reused from batch to batch.

    Outgoing channels are gathered in destination order straight into a channels-first buffer
    ``(C, B, H*W)``, so the all-to-all splits them along dim 0; received channels are put back in local
    order straight into a ``(B, C, H, W)`` buffer in the activation's layout (NCHW or channels-last).
    The block a rank keeps for itself never enters the all-to-all (its split is 0): it is gathered from
    the activation in fp32 while the exchange runs, behind the received rows, so it skips the codec and
    the copy through the wire (at 2 devices, half of each exchange's rows). With ``check``, a CRC-32 of every
    block travels beside it (decnn.checksum).
    """

    def __init__(self, point: int, plan: ExchangePlan, codec: Codec, comm: Communicator, clock: Clock,
                 check: bool = False):
        self.point, self.plan, self.codec, self.comm, self.clock = point, plan, codec, comm, clock
        self.check = check
        world = len(plan.send_splits)
        self.crc_splits = [1] * world  # one CRC per destination
        self.crc_out = torch.zeros(world, dtype=torch.int64, device=comm.device)
        self.crc_in = torch.zeros_like(self.crc_out)
        self.crcs = np.zeros(world, np.int64)
        me, first = plan.device, sum(plan.send_splits[:plan.device])
        self.kept = plan.send_splits[me]
        self.send_index = torch.cat([plan.send_index[:first], plan.send_index[first + self.kept:]]).to(comm.device)
        self.keep_index = plan.send_index[first:first + self.kept].to(comm.device)
        self.send_splits = [0 if d == me else n for d, n in enumerate(plan.send_splits)]
        self.recv_splits = [0 if d == me else n for d, n in enumerate(plan.recv_splits)]
        # Received rows come in source order without this rank's block, which goes last: renumber recv_index.
        own, total = sum(plan.recv_splits[:me]), sum(plan.recv_splits)
        new_to_old = torch.cat([torch.arange(own), torch.arange(own + self.kept, total),
                                torch.arange(own, own + self.kept)])
        self.recv_index = torch.argsort(new_to_old)[plan.recv_index].to(comm.device)
        self.shape: torch.Size | None = None
        self.pending: Timed | None = None
        self.crc_pending: Timed | None = None
        self.sent_bytes = self.sent_fp32_bytes = 0  # to other ranks; and what fp32 would have taken

    def _allocate(self, x: torch.Tensor) -> None:
        b, _, h, w = x.shape
        row = self.codec.row_elements(b, h * w)
        wire = dict(dtype=self.codec.wire_dtype, device=x.device)
        sent, received = sum(self.send_splits), sum(self.recv_splits)
        self.send_rows = torch.empty(sent, b, h, w, device=x.device)
        self.send_wire = torch.empty(sent, row, **wire) if self.codec.needs_buffer else None
        self.rows = torch.empty(received + self.kept, b, h * w, device=x.device)  # received, then kept
        self.recv_rows, self.kept_rows = self.rows[:received], self.rows[received:]
        # fp32 arrives straight in its rows; a codec's wire rows are decoded into them.
        self.recv_wire = (torch.empty(received, row, **wire) if self.codec.needs_buffer
                          else self.recv_rows.view(received, row))
        # The next segment gets the layout this one produced (channels-last after prepare_for_inference).
        self.channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        self.received = torch.empty(b, received + self.kept, h, w, device=x.device, memory_format=layout)
        self.bytes_per_batch = self.plan.channels_sent * row * self.recv_wire.element_size()
        self.fp32_bytes_per_batch = self.plan.channels_sent * b * h * w * 4
        self.shape = x.shape

    def start(self, x: torch.Tensor) -> None:
        """Pack ``x`` ([B, C_local, H, W]), start the all-to-all without waiting for it, keep this rank's block."""
        if x.shape != self.shape:
            self._allocate(x)
        b, _, h, w = x.shape
        channels_first = x.transpose(0, 1)
        with self.clock.part("pack"):
            torch.index_select(channels_first, 0, self.send_index, out=self.send_rows)
        with self.clock.part("codec"):
            wire = self.codec.encode(self.send_rows.view(-1, b, h * w), self.send_wire)
        self.pending = self.clock.issue(
            f"all_to_all {self.point}",
            lambda: self.comm.all_to_all(self.recv_wire, wire, self.recv_splits, self.send_splits, async_op=True),
        )
        if self.check:  # while the activations travel
            with self.clock.part("codec"):
                self.crc_out.copy_(torch.from_numpy(block_crcs(_bytes(wire), self.send_splits, self.crcs)))
            self.crc_pending = self.clock.issue(f"crc {self.point}", lambda: self.comm.all_to_all(
                self.crc_in, self.crc_out, self.crc_splits, self.crc_splits, async_op=True))
        with self.clock.part("pack"):
            torch.index_select(channels_first, 0, self.keep_index, out=self.kept_rows.view(self.kept, b, h, w))
        self.sent_bytes += self.bytes_per_batch
        self.sent_fp32_bytes += self.fp32_bytes_per_batch

    def finish(self) -> torch.Tensor:
        """Wait for the all-to-all; return this rank's new activation [B, C_local, H, W]."""
        self.pending.wait()
        self.pending = None
        if corrupts_next_block():  # test hook (DECNN_INJECT_FAULT=RANK:STEP:flip): the first block received
            flip_bytes(_bytes(self.recv_wire)[:next((n for n in self.recv_splits if n), 0)])
        if self.check:
            self.crc_pending.wait()
            with self.clock.part("codec"):
                check_blocks(_bytes(self.recv_wire), self.recv_splits, self.crc_in.cpu().numpy(), self.crcs,
                             self.point, self.comm.rank)
        b, c, h, w = self.received.shape
        if self.codec.needs_buffer:
            with self.clock.part("codec"):
                self.codec.decode(self.recv_wire, b, self.recv_rows)
        rows = self.rows.view(c, b, h, w)
        with self.clock.part("pack"):
            if self.channels_last:  # gather channels into the innermost dim of the NHWC buffer
                torch.index_select(rows.permute(1, 2, 3, 0), 3, self.recv_index,
                                   out=self.received.permute(0, 2, 3, 1))
            else:
                torch.index_select(rows.transpose(0, 1), 1, self.recv_index, out=self.received)
        return self.received


def _bytes(wire: torch.Tensor) -> np.ndarray:
    """The bytes of wire rows (C, row) as a uint8 numpy array: a view on the CPU, a copy from a GPU."""
    return wire.view(torch.uint8).cpu().numpy()


class BranchMode(ExchangeCounters):
    """This rank's branch driven through the run, ``in_flight`` batches at a time (``check``: --check-exchange)."""

    def __init__(self, branch: Branch, comm: Communicator, codec: Codec, normalize: Normalize, in_flight: int = 1,
                 check: bool = False):
        self.module, self.comm, self.normalize = branch, comm, normalize
        self.batches_per_step = in_flight
        self.clock = Clock()
        self.exchanges = [[ShuffleExchange(i, plan, codec, comm, self.clock, check) for _ in range(in_flight)]
                          for i, plan in enumerate(branch.plans)]

    @torch.inference_mode()
    def step(self, inputs: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """Run a step's batches (uint8 images, meaningful on rank 0; same-shaped buffers elsewhere).

        Returns the logits on rank 0, None on the other ranks.
        """
        comm, branch, clock = self.comm, self.module, self.clock
        pending = [clock.issue("broadcast", lambda x=x: comm.broadcast(x, 0, async_op=True)) for x in inputs]
        logits: list[torch.Tensor] = []
        last = len(branch.segments) - 1
        for i in range(last + 1):
            for m, images in enumerate(inputs):
                if i == 0:
                    pending[m].wait()
                    with clock.part("normalize"):
                        x = self.normalize(images)
                else:
                    x = self.exchanges[i - 1][m].finish()
                with clock.part(f"segment {i}"):
                    y = branch.segment(i, x)
                if i < last:
                    self.exchanges[i][m].start(y)
                    continue
                with clock.part("head"):
                    y = branch.head(y)
                logits.append(y)
                # Rank 0 needs the sum only after its last batch: the reduce waits at the end of the step.
                pending[m] = clock.issue("reduce", lambda y=y: comm.reduce(y, 0, async_op=True))
        for p in pending:
            p.wait()
        return [branch.finish(y) for y in logits] if comm.rank == 0 else None
