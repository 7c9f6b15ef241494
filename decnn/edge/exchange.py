"""One shuffle point's all-to-all for one in-flight batch, in numpy over MPI.

The same data movement as the PyTorch runtime's ``ShuffleExchange``: outgoing channels are gathered in
destination order into channels-first rows ``(C, B, H*W)`` and encoded; the block a device keeps for itself
never enters the all-to-all (its count is 0) and is gathered in fp32 while the exchange runs; received rows
are decoded and put back in local channel order into a ``(B, C, H, W)`` buffer for the next segment. With
``check``, a CRC-32 of every block travels beside it (decnn.checksum, the PyTorch runtime's wire).
"""

from __future__ import annotations

import numpy as np

from decnn.checksum import block_crcs, check_blocks
from decnn.distributed.faults import corrupts_next_block, flip_bytes
from decnn.edge.bundle import Plan
from decnn.edge.codec import Codec
from decnn.edge.transport import MpiComm
from decnn.timing import Clock, Timed


class ShuffleExchange:
    """Shuffle point ``point`` of one in-flight batch; buffers are reused while the shape stays."""

    def __init__(self, point: int, plan: Plan, codec: Codec, comm: MpiComm, clock: Clock, check: bool = False):
        self.point, self.plan, self.codec, self.comm, self.clock = point, plan, codec, comm, clock
        self.check = check
        world = len(plan.send_splits)
        self.crc_counts = [8] * world  # bytes: one int64 CRC per destination
        self.crc_out, self.crc_in = np.zeros(world, np.int64), np.zeros(world, np.int64)
        self.crcs = np.zeros(world, np.int64)  # the received blocks' own
        me, first = plan.device, sum(plan.send_splits[:plan.device])
        self.kept = plan.send_splits[me]
        self.send_index = np.concatenate([plan.send_index[:first], plan.send_index[first + self.kept:]])
        self.keep_index = plan.send_index[first:first + self.kept]
        self.send_splits = [0 if d == me else n for d, n in enumerate(plan.send_splits)]
        self.recv_splits = [0 if d == me else n for d, n in enumerate(plan.recv_splits)]
        # Received rows come in source order without this rank's block, which goes last: renumber recv_index.
        own, total = sum(plan.recv_splits[:me]), sum(plan.recv_splits)
        new_to_old = np.concatenate([np.arange(own), np.arange(own + self.kept, total),
                                     np.arange(own, own + self.kept)])
        self.recv_index = np.argsort(new_to_old)[plan.recv_index]
        self.shape: tuple | None = None
        self.pending: Timed | None = None
        self.crc_pending: Timed | None = None
        self.sent_bytes = self.sent_fp32_bytes = 0  # to other ranks; and what fp32 would have taken

    def _allocate(self, x: np.ndarray) -> None:
        b, _, h, w = x.shape
        row = self.codec.row_elements(b, h * w)
        sent, received = sum(self.send_splits), sum(self.recv_splits)
        self.send_rows = np.empty((sent, b, h, w), np.float32)
        self.send_wire = np.empty((sent, row), self.codec.wire_dtype) if self.codec.needs_buffer else None
        self.rows = np.empty((received + self.kept, b, h * w), np.float32)  # received, then kept
        self.recv_rows, self.kept_rows = self.rows[:received], self.rows[received:]
        self.recv_wire = (np.empty((received, row), self.codec.wire_dtype) if self.codec.needs_buffer
                          else self.recv_rows.reshape(received, row))
        self.received = np.empty((b, received + self.kept, h, w), np.float32)
        row_bytes = row * self.codec.wire_dtype.itemsize
        self.send_counts = [n * row_bytes for n in self.send_splits]
        self.recv_counts = [n * row_bytes for n in self.recv_splits]
        self.bytes_per_batch = sum(self.send_counts)
        self.fp32_bytes_per_batch = sent * b * h * w * 4
        self.shape = x.shape

    def start(self, x: np.ndarray) -> None:
        """Pack ``x`` (B, C_local, H, W), start the all-to-all without waiting for it, keep this rank's block."""
        if x.shape != self.shape:
            self._allocate(x)
        b, _, h, w = x.shape
        channels_first = x.transpose(1, 0, 2, 3)
        with self.clock.part("pack"):
            np.take(channels_first, self.send_index, axis=0, out=self.send_rows)
        with self.clock.part("codec"):
            wire = self.codec.encode(self.send_rows.reshape(-1, b, h * w), self.send_wire)
        self.pending = self.clock.issue(
            f"all_to_all {self.point}",
            lambda: self.comm.alltoallv(wire, self.send_counts, self.recv_wire, self.recv_counts,
                                        what=f"all_to_all {self.point}"),
        )
        if self.check:  # while the activations travel
            with self.clock.part("codec"):
                block_crcs(wire, self.send_splits, self.crc_out)
            self.crc_pending = self.clock.issue(f"crc {self.point}", lambda: self.comm.alltoallv(
                self.crc_out, self.crc_counts, self.crc_in, self.crc_counts, what=f"crc {self.point}"))
        with self.clock.part("pack"):
            np.take(channels_first, self.keep_index, axis=0, out=self.kept_rows.reshape(self.kept, b, h, w))
        self.sent_bytes += self.bytes_per_batch
        self.sent_fp32_bytes += self.fp32_bytes_per_batch

    def finish(self) -> np.ndarray:
        """Wait for the all-to-all; return this rank's new activation (B, C_local, H, W)."""
        self.pending.wait()
        self.pending = None
        if corrupts_next_block():  # test hook (DECNN_INJECT_FAULT=RANK:STEP:flip): the first block received
            flip_bytes(self.recv_wire.view(np.uint8)[:next((n for n in self.recv_splits if n), 0)])
        if self.check:
            self.crc_pending.wait()
            with self.clock.part("codec"):
                check_blocks(self.recv_wire, self.recv_splits, self.crc_in, self.crcs, self.point, self.comm.rank)
        b, c, h, w = self.received.shape
        if self.codec.needs_buffer:
            with self.clock.part("codec"):
                self.codec.decode(self.recv_wire, b, self.recv_rows)
        with self.clock.part("pack"):
            np.take(self.rows.reshape(c, b, h, w).transpose(1, 0, 2, 3), self.recv_index, axis=1, out=self.received)
        return self.received
