"""A step of the split on one device: its branch's graphs between the exchanges, ``in_flight`` batches at once.

Per batch: one broadcast of the uint8 input from rank 0, one all-to-all per shuffle point, one reduce of the
partial logits onto rank 0, as in the PyTorch runtime (decnn.inference.branch_mode), whose step this mirrors:
with several batches in flight, batch m's exchange runs while batch m+1 computes (the paper's Scheme 3), and
every rank issues the collectives in the same order, so the results equal those of one batch at a time.
"""

from __future__ import annotations

import numpy as np

from decnn.edge.bundle import DeviceBundle
from decnn.edge.codec import Codec
from decnn.edge.exchange import ShuffleExchange
from decnn.edge.transport import MpiComm
from decnn.timing import Clock, ExchangeCounters


class Normalize:
    """uint8 images -> float inputs: ``(x / 255 - mean) / std`` per channel, as the PyTorch runtime computes it;
    float inputs are already normalised and pass unchanged."""

    def __init__(self, mean: list[float], std: list[float]):
        std_ = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
        self.scale = np.float32(1.0) / (np.float32(255.0) * std_)
        self.shift = np.asarray(mean, np.float32).reshape(1, -1, 1, 1) / std_

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if images.dtype == np.float32:
            return images
        x = images.astype(np.float32)
        x *= self.scale
        x -= self.shift
        return x


class EdgeSplit(ExchangeCounters):
    """This rank's branch driven through a run, ``in_flight`` batches per step (``check``: --check-exchange)."""

    def __init__(self, bundle: DeviceBundle, comm: MpiComm, codec: Codec, in_flight: int = 1, check: bool = False):
        self.bundle, self.comm, self.codec, self.param_bytes = bundle, comm, codec, bundle.param_bytes
        self.normalize = Normalize(bundle.manifest["mean"], bundle.manifest["std"])
        self.batches_per_step = in_flight
        self.clock = Clock()
        self.exchanges = [[ShuffleExchange(i, plan, codec, comm, self.clock, check) for _ in range(in_flight)]
                          for i, plan in enumerate(bundle.plans)]

    def step(self, inputs: list[np.ndarray]) -> list[np.ndarray] | None:
        """Run a step's uint8 batches (meaningful on rank 0; same-shaped buffers elsewhere): logits on rank 0."""
        comm, bundle, clock = self.comm, self.bundle, self.clock
        pending = [clock.issue("broadcast", lambda x=x: comm.bcast(x, 0)) for x in inputs]
        partials: list[np.ndarray] = []
        sums: list[np.ndarray | None] = []
        last = len(bundle.segments) - 1
        for i in range(last + 1):
            for m, images in enumerate(inputs):
                if i == 0:
                    pending[m].wait()
                    with clock.part("normalize"):
                        x = self.normalize(images)
                else:
                    x = self.exchanges[i - 1][m].finish()
                with clock.part(f"segment {i}"):
                    y = bundle.segments[i](x)
                if i < last:
                    self.exchanges[i][m].start(y)
                    continue
                with clock.part("head"):
                    y = bundle.head(y)
                partials.append(y)
                sums.append(np.empty_like(y) if comm.rank == 0 else None)
                # Rank 0 needs the sum only after its last batch: the reduce waits at the end of the step.
                pending[m] = clock.issue("reduce", lambda y=y, s=sums[-1]: comm.reduce(y, s, 0))
        for p in pending:
            p.wait()
        return [bundle.tail(s) for s in sums] if comm.rank == 0 else None


class EdgeWhole:
    """The whole model's graph on one device: the 1-device baseline of the same runtime."""

    batches_per_step = 1

    def __init__(self, graph, mean: list[float], std: list[float]):
        self.graph, self.normalize, self.clock = graph, Normalize(mean, std), Clock()

    def step(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for images in inputs:
            with self.clock.part("normalize"):
                x = self.normalize(images)
            with self.clock.part("segment 0"):
                out.append(self.graph(x))
        return out

    def reset_stats(self) -> None:
        self.clock.reset()

    def rank_stats(self) -> dict:
        return {"sent_bytes_per_point": [], "fp32_bytes_per_point": []}
