"""The peers' spatial splits on one device, whatever its runtime: a device's program (:mod:`decnn.wire.spatial`)
run with the runtime's arrays, pieces and transport.

Per batch: one broadcast of the uint8 images from rank 0; per step, the halo pixels sent to and received from
the devices that hold them (all at once) while the buffers are filled from the device's own tile, then the
piece; at the end each device pools its tile of the features inside a zero map (the pool is linear, so the
devices' contributions add up), one reduce sums them onto rank 0, which runs the classifier.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from decnn.common.timing import Clock
from decnn.execution.messages import Array, Done, Pending, Transport
from decnn.wire.spatial import DeviceProgram, Input, Region

Piece = Callable[[list[Array]], Sequence[Array]]


class Buffers(Protocol):
    """A runtime's activation buffers ``(batch, channels, height, width)``: ``full`` in its own layout (what its
    pieces compute fastest on), ``empty`` contiguous (what messages need)."""

    def full(self, shape: tuple[int, ...], fill: float) -> Array: ...

    def empty(self, shape: tuple[int, ...], dtype: str) -> Array: ...


def part(array: Array, region: Region) -> Array:
    """The pixels ``region`` of an activation (a view)."""
    return array[:, :, region.r0:region.r1, region.c0:region.c1]


class SpatialStep:
    """One device's part of a spatial split, one batch at a time (a runtime's mode object wraps it).

    ``pieces[i](inputs)`` runs piece i; ``normalize(images)`` turns uint8 images into the model's input;
    ``pool(map)`` is the head's (linear) pooling, ``classifier(pooled)`` the rest of the head (rank 0 only).
    """

    batches_per_step = 1

    def __init__(self, program: DeviceProgram, pieces: Sequence[Piece], arrays: Buffers, transport: Transport,
                 normalize: Callable, pool: Callable, classifier: Callable):
        self.program, self.pieces, self.arrays, self.transport = program, pieces, arrays, transport
        self.normalize, self.pool, self.classifier = normalize, pool, classifier
        self.memory: dict[tuple, Array] = {}
        self.clock = Clock()
        self.reset_stats()

    def step(self, inputs: list[Array]) -> list[Array] | None:
        """Run uint8 batches (meaningful on rank 0; same-shaped buffers elsewhere); logits on rank 0."""
        clock, transport = self.clock, self.transport
        out = []
        for images in inputs:
            clock.issue("broadcast", lambda images=images: transport.broadcast(images, 0)).wait()
            with clock.part("normalize"):
                x = self.normalize(images)
            tile = self.features(x)
            with clock.part("head"):
                c, h, w = self.program.feature_shape
                whole = self._buffer(("features", self.program), (tile.shape[0], c, h, w), 0.0)
                part(whole, self.program.feature_tile)[...] = tile
                pooled = self.pool(whole)
            self.pooled_bytes += int(pooled.nbytes)
            self.images += len(images)
            summed = clock.issue("reduce", lambda pooled=pooled: transport.reduce_sum(pooled, 0)).wait()
            if transport.rank == 0:
                with clock.part("head"):
                    out.append(self.classifier(summed))
        return out if transport.rank == 0 else None

    def features(self, x: Array) -> Array:
        """This device's tile of the features, from the whole normalised image ``x``."""
        maps = {0: x}
        for s, step in enumerate(self.program.steps):
            with self.clock.part("pack"):
                receives: list[tuple[Array, Array, int, int]] = []  # (message, where it goes, source, tag)
                buffers = [self._input(spec, maps[spec.tensor], receives) for spec in step.inputs]
                sends = []
                for x in step.sends:
                    data = part(maps[x.tensor], x.part)
                    message = self._buffer(x, data.shape)
                    message[...] = data
                    sends.append((message, x.dst, x.tag))
            if step.group_exchanges:
                messages = [(data, src, tag) for data, _, src, tag in receives]
                self.clock.issue(f"halo {step.piece}", lambda sends=sends, messages=messages: self.transport.exchange(
                    sends, messages)).wait()
                self.sent_bytes[s] += sum(int(data.nbytes) for data, _, _ in sends)
                with self.clock.part("pack"):
                    for data, into, _, _ in receives:
                        into[...] = data
            with self.clock.part(f"segment {step.piece}"):
                outputs = self.pieces[step.piece](buffers)
            maps.update(zip(step.outputs, outputs))
            for t in step.release:
                del maps[t]
        return maps[self.program.features]

    def _input(self, spec: Input, tile: Array, receives: list) -> Array:
        """A piece's input: a view of the tile, or a buffer filled from it whose other pixels arrive from the
        devices that hold them (appended to ``receives``)."""
        if spec.view is not None:
            return part(tile, spec.view)
        b, c = tile.shape[0], tile.shape[1]
        buffer = self._buffer(spec, (b, c, spec.region.rows, spec.region.cols), spec.fill)
        for r in spec.receives:
            receives.append((self._buffer(r, (b, c, r.into.rows, r.into.cols)), part(buffer, r.into), r.src, r.tag))
        if spec.local is not None:
            part(buffer, spec.local[1])[...] = part(tile, spec.local[0])
        return buffer

    def _buffer(self, key, shape: tuple[int, ...], fill: float | None = None) -> Array:
        """The buffer of one input, message or map, made once per batch size and kept: its padding is written
        once, and everything else is overwritten at every use."""
        key = (key, shape)
        if key not in self.memory:
            self.memory[key] = self.arrays.empty(shape, "float32") if fill is None else self.arrays.full(shape, fill)
        return self.memory[key]

    def reset_stats(self) -> None:
        """Start counting afresh (after the warm-up)."""
        self.clock.reset()
        self.sent_bytes = [0] * len(self.program.steps)  # per step: the halo pixels this device sent
        self.pooled_bytes = self.images = 0

    def rank_stats(self) -> dict:
        return {"sent_bytes_per_point": list(self.sent_bytes), "fp32_bytes_per_point": list(self.sent_bytes),
                "pooled_bytes_per_image": self.pooled_bytes / max(self.images, 1)}


class LocalGroup:
    """The reference transport: every device a thread of this process, messages through queues (a copy each).

    What a split computes, checked without processes: ``LocalGroup(n).run(make_step, images)`` runs
    ``make_step(transport)`` on each of n threads and returns rank 0's logits.
    """

    def __init__(self, devices: int, copy: Callable[[Array], Array]):
        self.devices, self.copy = devices, copy
        self.boxes: dict[tuple, queue.Queue] = {}
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(devices)
        self.shared: dict = {}

    def box(self, key: tuple) -> queue.Queue:
        with self.lock:
            return self.boxes.setdefault(key, queue.Queue())

    def run(self, make_step: Callable[[LocalTransport], SpatialStep], images: Array) -> Array:
        results: list = [None] * self.devices
        errors: list[BaseException] = []

        def device(rank: int) -> None:
            try:
                step = make_step(LocalTransport(self, rank))
                out = step.step([images if rank == 0 else self.copy(images) * 0])
                results[rank] = out[0] if out else None
            except BaseException as e:  # reported by the caller, with the others' threads ended
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=device, args=(r,)) for r in range(self.devices)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results[0]


class LocalTransport:
    """One thread's end of a :class:`LocalGroup`."""

    def __init__(self, group: LocalGroup, rank: int):
        self.group, self.rank = group, rank

    def exchange(self, sends: list, receives: list) -> Pending:
        for array, dst, tag in sends:
            self.group.box((self.rank, dst, tag)).put(self.group.copy(array))

        def take():
            for array, src, tag in receives:
                array[...] = self.group.box((src, self.rank, tag)).get(timeout=60)
        return Done(then=take)

    def broadcast(self, array: Array, root: int) -> Pending:
        g = self.group
        if self.rank == root:
            g.shared["broadcast"] = g.copy(array)
        g.barrier.wait()
        array[...] = g.shared["broadcast"]
        g.barrier.wait()
        return Done()

    def reduce_sum(self, array: Array, root: int) -> Pending:
        g = self.group
        g.box(("reduce", self.rank)).put(g.copy(array))
        if self.rank != root:
            return Done()
        total = g.box(("reduce", 0)).get(timeout=60)
        for r in range(1, g.devices):
            total = total + g.box(("reduce", r)).get(timeout=60)
        return Done(total)
