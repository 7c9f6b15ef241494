"""A spatial split (MoDNN's row bands, Coates et al.'s tiles) on a device without torch: the device derives its
program from the export's layout for the tiling it runs, ONNX Runtime runs the pieces, MPI carries the halos,
and :mod:`decnn.spatial`'s executor (the PyTorch runtime's too) drives the steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from decnn.edge.bundle import BundleError, Graph, read_manifest
from decnn.edge.split import Normalize
from decnn.edge.transport import MpiComm
from decnn.spatial import Layout, SpatialError, Tiling, compile_programs
from decnn.spatial.executor import AllOf, SpatialStep, Then


def tiling_of(manifest: dict, devices: int, mode: str | None = None, speeds: list[float] | None = None) -> Tiling:
    """The tiles a spatial export runs on ``devices``: its mode and speeds unless given; BundleError where its
    maps cannot be cut that way."""
    mode = mode or manifest["mode"]
    if speeds is None and mode == "modnn" and manifest.get("speeds") and len(manifest["speeds"]) == devices:
        speeds = manifest["speeds"]
    try:
        tiling = Tiling.for_mode(mode, devices, speeds)
        compile_programs(Layout.from_dict(manifest["layout"]), tiling)
    except SpatialError as e:
        size = manifest["image_size"]
        raise BundleError(f"{mode} over {devices} devices cannot split this export ({manifest['model_name']} at "
                          f"{size}x{size}): {e}") from None
    return tiling


class NumpyArrays:
    """Activations as float32 numpy arrays."""

    def full(self, shape: tuple[int, ...], fill: float) -> np.ndarray:
        return np.full(shape, fill, np.float32)

    def empty(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.empty(shape, np.float32)


class MpiTransport:
    """MPI as the executor's transport: non-blocking point-to-point and collectives behind the deadline."""

    def __init__(self, comm: MpiComm):
        self.comm, self.rank = comm, comm.rank

    def exchange(self, sends: list, receives: list) -> AllOf:
        """MoDNN's way: non-blocking point-to-point with the devices that hold or need the halos."""
        return AllOf([self.comm.recv(a, src, tag) for a, src, tag in receives]
                     + [self.comm.send(a, dst, tag) for a, dst, tag in sends])

    def broadcast(self, array: np.ndarray, root: int):
        return self.comm.bcast(array, root)

    def reduce_sum(self, array: np.ndarray, root: int):
        out = np.empty_like(array) if self.rank == root else None
        return Then(self.comm.reduce(array, out, root), lambda: out)


class SpatialBundle:
    """What a device reads of a spatial export: the manifest, the layout and the graphs (each piece, the pool,
    and on device 0 the classifier)."""

    def __init__(self, directory: str | Path, device: int, threads: int = 1):
        directory = Path(directory)
        self.manifest = manifest = read_manifest(directory)
        graphs = manifest["graphs"]
        names = [*graphs["pieces"], graphs["pool"], *([graphs["classifier"]] if device == 0 else [])]
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise BundleError(f"{directory} lacks {', '.join(missing)}: copy them there, or export again")
        self.layout = Layout.from_dict(manifest["layout"])
        self.pieces = [Graph(directory / name, threads).run for name in graphs["pieces"]]
        self.pool = Graph(directory / graphs["pool"], threads)
        self.classifier = Graph(directory / graphs["classifier"], threads) if device == 0 else None
        self.param_bytes: int = manifest["devices"][0]["param_bytes"]


class EdgeSpatial(SpatialStep):
    """Device ``transport.rank``'s part of a spatial split, cut by ``tiling``."""

    def __init__(self, bundle: SpatialBundle, transport, tiling: Tiling):
        program = compile_programs(bundle.layout, tiling)[transport.rank]
        super().__init__(program, bundle.pieces, NumpyArrays(), transport,
                         Normalize(bundle.manifest["mean"], bundle.manifest["std"]), bundle.pool, bundle.classifier)
        self.bundle, self.tiling, self.param_bytes = bundle, tiling, bundle.param_bytes
