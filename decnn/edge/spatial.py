"""A spatial split (MoDNN's row bands, Coates et al.'s tiles) on a device without torch: the device derives its
program from the export's layout for the tiling it runs, ONNX Runtime runs the pieces, MPI carries the halos,
and :mod:`decnn.wire.spatial`'s executor (the PyTorch runtime's too) drives the steps."""

from __future__ import annotations

from pathlib import Path

from decnn.edge.branches import Normalize
from decnn.edge.bundle import Graph
from decnn.edge.transport import NumpyTensors
from decnn.execution.spatial import SpatialStep
from decnn.wire.export_format import BundleError, read_manifest
from decnn.wire.spatial import Layout, SpatialError, Tiling, compile_programs


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
        super().__init__(program, bundle.pieces, NumpyTensors(), transport,
                         Normalize(bundle.manifest["mean"], bundle.manifest["std"]), bundle.pool, bundle.classifier)
        self.bundle, self.tiling, self.param_bytes = bundle, tiling, bundle.param_bytes
