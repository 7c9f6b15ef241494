"""The cost model of the peers' spatial splits, from measured parts only, as for DeCNN's branches.

Profile (``decnn plan profile --spatial``): every rank runs its own tile of every step of each spatial mode
the group size allows (``modnn``, and ``grid`` where the devices form a grid), concurrently as in a run and
prepared as the run prepares it, with a transport that moves nothing: the time from one piece's end to the
next one's is that step's packing and compute. The halo bytes of every step follow from the tiling.

Prediction: the devices work in lockstep, every step waiting for the halos it needs, so a batch costs the
input's broadcast, then per step the slowest device's packing and compute plus, where devices exchange, the
transfer (the busiest endpoint's bytes over its links plus the slowest pair's message latency), then the
head and the reduce of the pooled tiles.
"""

from __future__ import annotations

import statistics
import time

import torch

from decnn.common.costmodel import Prediction, lockstep
from decnn.distributed.transport import TorchTensors
from decnn.execution.messages import Then
from decnn.execution.spatial import SpatialStep, part
from decnn.inference.inputs import Normalize, SyntheticImages
from decnn.inference.spec import ModelSpec
from decnn.partition.spatial import spatial_model
from decnn.wire.spatial import SPATIAL_MODES, SpatialError, Tiling, compile_programs

_REPEATS = 5


class _Idle:
    def wait(self) -> None:
        pass


class _NoWire:
    """A transport that moves nothing: received halos are zeros (as fast to compute on as real ones)."""

    def __init__(self, rank: int):
        self.rank = rank

    def exchange(self, sends: list, receives: list) -> _Idle:
        for array, _, _ in receives:
            array.zero_()
        return _Idle()

    def broadcast(self, array, root: int) -> _Idle:
        return _Idle()

    def reduce_sum(self, array, root: int) -> Then:
        return Then(_Idle(), lambda: array)


def spatial_modes(devices: int) -> list[str]:
    """The spatial modes a group of ``devices`` can run."""
    modes = []
    for mode in SPATIAL_MODES:
        try:
            Tiling.for_mode(mode, devices)
            modes.append(mode)
        except SpatialError:
            pass
    return modes


@torch.inference_mode()
def time_spatial(spec: ModelSpec, batch: int, image_size: int, devices: int, rank: int,
                 repeats: int = _REPEATS) -> tuple[dict[str, list[float]], dict[str, list[list[list[int]]]], int]:
    """This rank's seconds per step of each spatial mode (its head last), every step's halo bytes per batch
    ``[step][src][dst]`` by mode, and the pooled features' bytes per image (what the reduce carries)."""
    spatial = spatial_model(spec.build().eval())
    for piece in spatial.pieces:
        piece.to(memory_format=torch.channels_last)
    layout = spatial.layout((image_size, image_size))
    images = SyntheticImages(batch, image_size, spec.seed).batch(0, batch)[0]
    x = Normalize(spec.mean, spec.std, torch.device("cpu"))(images)
    seconds, halos = {}, {}
    for mode in spatial_modes(devices):
        programs = compile_programs(layout, Tiling.for_mode(mode, devices))
        ends: list[float] = []

        def timed(piece, inputs, ends=ends):
            out = piece(*inputs)
            ends.append(time.perf_counter())
            return out

        step = SpatialStep(programs[rank], [lambda inputs, p=p: timed(p, inputs) for p in spatial.pieces],
                           TorchTensors(channels_last=True), _NoWire(rank), lambda v: v, spatial.pool,
                           spatial.classifier)
        runs = []
        for r in range(repeats + 1):  # the first is a warm-up
            ends.clear()
            start = time.perf_counter()
            tile = step.features(x)
            whole = torch.zeros(batch, *programs[rank].feature_shape)
            part(whole, programs[rank].feature_tile)[...] = tile
            pooled = step.pool(whole)
            step.classifier(pooled)
            head = time.perf_counter() - ends[-1]
            if r:
                runs.append([b - a for a, b in zip([start, *ends[:-1]], ends)] + [head])
        seconds[mode] = [statistics.median(t) for t in zip(*runs)]
        channels = [c for c, _, _ in layout.shapes]
        halos[mode] = [[[sum(x.part.rows * x.part.cols * channels[x.tensor] * 4 * batch
                             for x in p.steps[s].sends if x.dst == d) for d in range(devices)] for p in programs]
                       for s in range(len(layout.pieces))]
    return seconds, halos, int(pooled.numel() * 4 // batch)


def predict_spatial(profile, mode: str) -> Prediction:
    """A batch of a spatial split from a profile measured with ``--spatial``."""
    n, b, links = profile.num_devices, profile.batch, profile.links

    def link(i: int, j: int, nbytes: float) -> float:
        return links.latency_s[i][j] + nbytes / links.bytes_per_s[i][j]

    broadcast = max((link(0, j, b * profile.input_bytes) for j in range(1, n)), default=0.0)
    reduce = max((link(j, 0, b * profile.pooled_bytes) for j in range(1, n)), default=0.0)
    return lockstep([dev.spatial_s[mode] for dev in profile.devices], profile.halo_bytes[mode], links.latency_s,
                    links.bytes_per_s, broadcast, reduce)
