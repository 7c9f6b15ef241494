"""DeCNN's branches on one device, whatever its runtime: each segment of its branch, and at each shuffle point one
all-to-all laid out as :mod:`decnn.wire.exchange` says.

Per batch: one broadcast of the uint8 images from rank 0, one all-to-all per shuffle point, one reduce of the
partial logits onto rank 0. With several batches in flight (the paper's Scheme 3), batch m's exchange runs
while batch m+1 computes: for segment i and batch m the device waits for m's exchange, computes segment i of m
and starts m's next exchange without waiting, then moves on to m+1. Every device issues the collectives in the
same order, so the results equal those of one batch at a time.

A runtime gives its array operations (:class:`Tensors`), its codecs (:class:`Codec`), its transport
(:class:`~decnn.execution.messages.Transport`) and its branch's graphs as callables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from decnn.common.checksum import block_crcs, check_blocks
from decnn.common.timing import Clock, ExchangeCounters, Timed
from decnn.emulation.faults import corrupts_next_block, flip_bytes
from decnn.execution.messages import Array, Transport
from decnn.wire.exchange import WIRE_DTYPES, BlockLayout, ShufflePlan, row_elements


class Tensors(Protocol):
    """A runtime's operations on activations ``(batch, channels, height, width)`` and flat wire arrays."""

    def array(self, values: np.ndarray): ...  # numpy values (channel indices, CRCs) as the runtime takes them

    def empty(self, shape: tuple[int, ...], dtype: str) -> Array: ...  # contiguous; a numpy dtype name

    def like(self, x: Array, shape: tuple[int, ...]) -> Array: ...  # an activation buffer in ``x``'s layout

    def take(self, x: Array, index, out: Array) -> Array:
        """``out[:] = x[:, index]``."""

    def put(self, out: Array, index, src: Array) -> None:
        """``out[:, index] = src``."""

    def numpy(self, array: Array) -> np.ndarray: ...  # the array's values on the CPU (a view where it can be)


class Codec(Protocol):
    """A runtime's coding of ``(image, channel)`` rows for the wire (the format: :mod:`decnn.wire.exchange`)."""

    name: str
    needs_buffer: bool  # False: the wire rows are the fp32 rows themselves

    def encode(self, rows: Array, wire: Array) -> Array: ...  # fp32 rows (N, P) -> wire rows (N, R)

    def decode(self, wire: Array, out: Array) -> Array: ...  # wire rows (N, R) -> fp32 rows (N, P), in out


class ShuffleExchange:
    """One shuffle point's all-to-all for one in-flight batch; its buffers are made once per batch shape.

    A device's channels for each other device are gathered, batch-major, straight into that device's block of
    the wire (through an fp32 buffer and the codec where the wire is compressed); the block a device keeps
    goes straight to its place in the next segment's input while the exchange runs; each arriving block is
    decoded and put in place. With ``check``, a CRC-32 of every block travels beside it (``--check-exchange``).
    """

    def __init__(self, point: int, plan: ShufflePlan, codec: Codec, tensors: Tensors, transport: Transport,
                 clock: Clock, check: bool = False):
        self.point, self.codec, self.tensors, self.transport, self.clock = point, codec, tensors, transport, clock
        self.check = check
        layout = BlockLayout.of(plan)
        self.sizes = [len(s) for s in layout.send], [len(r) for r in layout.recv]
        self.send, self.recv = [tensors.array(s) for s in layout.send], [tensors.array(r) for r in layout.recv]
        self.keep, self.keep_at = tensors.array(layout.keep), tensors.array(layout.keep_at)
        self.kept_channels = len(layout.keep)
        self.channels = sum(self.sizes[1]) + self.kept_channels
        n = len(plan.send_splits)
        self.ones = [1] * n
        self.crc_out, self.crc_in = tensors.empty((n,), "int64"), tensors.empty((n,), "int64")
        self.crcs = np.zeros(n, np.int64)
        self.shape: tuple | None = None
        self.pending: Timed | None = None
        self.crc_pending: Timed | None = None
        self.sent_bytes = self.sent_fp32_bytes = 0  # to other devices; and what fp32 would have taken

    def _allocate(self, x: Array) -> None:
        b, _, h, w = x.shape
        t, pixels, wire_dtype = self.tensors, h * w, WIRE_DTYPES[self.codec.name]
        row = row_elements(self.codec.name, pixels)
        send, recv = self.sizes
        self.send_counts, self.recv_counts = [b * c * row for c in send], [b * c * row for c in recv]
        self.send_wire = t.empty((sum(self.send_counts),), wire_dtype)
        self.recv_wire = t.empty((sum(self.recv_counts),), wire_dtype)
        self.send_blocks = _blocks(self.send_wire, self.send_counts, row)  # (B * C_d, row) each
        self.recv_blocks = _blocks(self.recv_wire, self.recv_counts, row)
        if self.codec.needs_buffer:  # fp32 rows beside the compressed wire
            self.send_rows = [t.empty((b, c, h, w), "float32") for c in send]
            self.recv_rows = [t.empty((b * c, pixels), "float32") for c in recv]
        self.kept = t.empty((b, self.kept_channels, h, w), "float32")
        self.received = t.like(x, (b, self.channels, h, w))
        self.itemsize = np.dtype(wire_dtype).itemsize
        self.bytes_per_batch = sum(self.send_counts) * self.itemsize
        self.fp32_bytes_per_batch = sum(send) * b * pixels * 4
        self.shape = tuple(x.shape)

    def start(self, x: Array) -> None:
        """Pack ``x`` (B, C_local, H, W), start the all-to-all without waiting for it, keep this device's block."""
        if tuple(x.shape) != self.shape:
            self._allocate(x)
        b, _, h, w = x.shape
        t = self.tensors
        for d, channels in enumerate(self.sizes[0]):
            if not channels:
                continue
            if self.codec.needs_buffer:
                with self.clock.part("pack"):
                    t.take(x, self.send[d], self.send_rows[d])
                with self.clock.part("codec"):
                    self.codec.encode(self.send_rows[d].reshape(b * channels, h * w), self.send_blocks[d])
            else:
                with self.clock.part("pack"):
                    t.take(x, self.send[d], self.send_blocks[d].reshape(b, channels, h, w))
        self.pending = self.clock.issue(f"all_to_all {self.point}", lambda: self.transport.all_to_all(
            self.send_wire, self.send_counts, self.recv_wire, self.recv_counts))
        if self.check:  # while the activations travel
            with self.clock.part("codec"):
                self.crc_out[:] = t.array(block_crcs(self._bytes(self.send_wire), self.send_counts, self.crcs))
            self.crc_pending = self.clock.issue(f"crc {self.point}", lambda: self.transport.all_to_all(
                self.crc_out, self.ones, self.crc_in, self.ones))
        with self.clock.part("pack"):
            t.put(self.received, self.keep_at, t.take(x, self.keep, self.kept))
        self.sent_bytes += self.bytes_per_batch
        self.sent_fp32_bytes += self.fp32_bytes_per_batch

    def finish(self) -> Array:
        """Wait for the all-to-all; return this device's new activation (B, C_local, H, W)."""
        self.pending.wait()
        self.pending = None
        if corrupts_next_block():  # test hook (DECNN_INJECT_FAULT=RANK:STEP:flip): the first block received
            flip_bytes(self._bytes(self.recv_wire)[:next((n for n in self.recv_counts if n), 0)])
        if self.check:
            self.crc_pending.wait()
            with self.clock.part("codec"):
                check_blocks(self._bytes(self.recv_wire), self.recv_counts, self.tensors.numpy(self.crc_in),
                             self.crcs, self.point, self.transport.rank)
        b, _, h, w = self.received.shape
        for s, channels in enumerate(self.sizes[1]):
            if not channels:
                continue
            rows = self.recv_blocks[s]
            if self.codec.needs_buffer:
                with self.clock.part("codec"):
                    rows = self.codec.decode(rows, self.recv_rows[s])
            with self.clock.part("pack"):
                self.tensors.put(self.received, self.recv[s], rows.reshape(b, channels, h, w))
        return self.received

    def _bytes(self, wire: Array) -> np.ndarray:
        """The wire's bytes, one row per element (so that counts of elements cut it into blocks)."""
        return self.tensors.numpy(wire).view(np.uint8).reshape(-1, self.itemsize)


def _blocks(wire: Array, counts: list[int], row: int) -> list[Array]:
    """``wire`` cut into consecutive blocks of ``counts`` elements, each viewed as rows of ``row`` elements."""
    blocks, start = [], 0
    for n in counts:
        blocks.append(wire[start:start + n].reshape(n // row, row))
        start += n
    return blocks


class BranchStep(ExchangeCounters):
    """This device's branch driven through a run, ``in_flight`` batches per step: ``segments[i](x)`` (the stem
    before segment 0), ``head(y)`` (this branch's partial logits), ``finish(summed)`` (the logits, device 0)."""

    def __init__(self, segments: Sequence[Callable], head: Callable, finish: Callable | None,
                 plans: Sequence[ShufflePlan], codec: Codec, tensors: Tensors, transport: Transport,
                 normalize: Callable, in_flight: int = 1, check: bool = False):
        self.segments, self.head, self.finish, self.normalize = segments, head, finish, normalize
        self.transport, self.codec, self.batches_per_step = transport, codec, in_flight
        self.clock = Clock()
        self.exchanges = [[ShuffleExchange(i, plan, codec, tensors, transport, self.clock, check)
                           for _ in range(in_flight)] for i, plan in enumerate(plans)]

    def step(self, inputs: list[Array]) -> list[Array] | None:
        """Run a step's uint8 batches (meaningful on device 0; same-shaped buffers elsewhere): logits on 0."""
        transport, clock = self.transport, self.clock
        pending = [clock.issue("broadcast", lambda x=x: transport.broadcast(x, 0)) for x in inputs]
        last = len(self.segments) - 1
        for i in range(last + 1):
            for m, images in enumerate(inputs):
                if i == 0:
                    pending[m].wait()
                    with clock.part("normalize"):
                        x = self.normalize(images)
                else:
                    x = self.exchanges[i - 1][m].finish()
                with clock.part(f"segment {i}"):
                    y = self.segments[i](x)
                if i < last:
                    self.exchanges[i][m].start(y)
                    continue
                with clock.part("head"):
                    y = self.head(y)
                # Device 0 needs the sum only after its last batch: the reduce waits at the end of the step.
                pending[m] = clock.issue("reduce", lambda y=y: transport.reduce_sum(y, 0))
        sums = [p.wait() for p in pending]
        return [self.finish(s) for s in sums] if transport.rank == 0 else None
