"""DeCNN's branch of an export on a device without torch (:class:`EdgeSplit`), and the whole model's graph on one
device (:func:`edge_whole`, the baseline and the reference of ``--verify``), from uint8 images."""

from __future__ import annotations

import numpy as np

from decnn.edge.bundle import DeviceBundle
from decnn.edge.numpy_codecs import Codec
from decnn.edge.transport import MpiComm, MpiTransport, NumpyTensors
from decnn.execution.branch import BranchStep
from decnn.execution.whole import WholeStep


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


class EdgeSplit(BranchStep):
    """This rank's branch of the export driven through a run, ``in_flight`` batches per step (``check``:
    --check-exchange): :mod:`decnn.execution.branch` over ONNX Runtime's graphs, numpy and MPI."""

    def __init__(self, bundle: DeviceBundle, comm: MpiComm, codec: Codec, in_flight: int = 1, check: bool = False):
        self.bundle, self.comm, self.param_bytes = bundle, comm, bundle.param_bytes
        super().__init__(bundle.segments, bundle.head, bundle.tail if comm.rank == 0 else None, bundle.plans, codec,
                         NumpyTensors(), MpiTransport(comm), Normalize(bundle.manifest["mean"], bundle.manifest["std"]),
                         in_flight, check)


def edge_whole(graph, mean: list[float], std: list[float]) -> WholeStep:
    """The whole model's graph on one device: the 1-device baseline of the same runtime."""
    return WholeStep(graph, Normalize(mean, std))
