"""The configurations a benchmark compares: the 1-device baselines and every way to use N devices.

A *family* is a plain model (what users start from) and its DeCNN at the image size they run: ResNet-34 at
64x64 (Tiny-ImageNet) and the paper's ResNet-50 at 224x224. Each runs on 1 device, as DeCNN's branches
(``branch``), as the peers' spatial splits of the plain model (``modnn`` row bands, ``grid`` tiles), as a
layer-wise pipeline and as data-parallel copies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from decnn.wire.spatial import SpatialError, Tiling


@dataclass(frozen=True)
class Family:
    """A plain model and its DeCNN (timm kwargs with ``model``), their rows' names, the image size."""

    plain: dict
    decnn: dict
    plain_name: str
    decnn_name: str
    image_size: int

    def names(self) -> dict[str, str]:
        """The baselines of the family's rows: ratio key -> configuration name (without a runtime prefix)."""
        return {"plain": f"{self.plain_name} single", "decnn_single": f"{self.decnn_name} single"}


FAMILIES = {
    "resnet34": Family({"model": "decnn_resnet34", "groups": 1, "width": 1.0},
                       {"model": "decnn_resnet34", "groups": 4, "width": 1.5}, "resnet34", "decnn", 64),
    # The paper's experiment: resnet50_s3_addchannel (groups 4, x1.5) against plain ResNet-50, at 224x224.
    "resnet50": Family({"model": "decnn_resnet50", "groups": 1, "width": 1.0, "stem": "imagenet"},
                       {"model": "decnn_resnet50", "groups": 4, "width": 1.5, "stem": "imagenet"},
                       "resnet50", "decnn50", 224),
    # A smoke test of a benchmark in seconds: ResNet-18 at quarter width against its G4 x0.5, 32x32.
    "tiny": Family({"model": "decnn_resnet18", "groups": 1, "width": 0.25},
                   {"model": "decnn_resnet18", "groups": 4, "width": 0.5}, "resnet18", "decnn18", 32),
}
BASELINE, DECNN = FAMILIES["resnet34"].plain, FAMILIES["resnet34"].decnn


@dataclass(frozen=True)
class BenchConfig:
    """One run of ``infer_distributed.py`` (or ``decnn edge``); ``link`` is None for one process or loopback."""

    name: str
    mode: str
    devices: int
    batch: int
    model: dict = field(default_factory=lambda: dict(DECNN))
    exchange_dtype: str = "fp32"
    overlap: int = 1
    link: str | None = None
    runtime: str = "torch"  # torch (infer_distributed.py) or edge (decnn edge: ONNX Runtime + MPI)
    family: str = "resnet34"

    @property
    def oversubscribed(self) -> bool:
        return self.devices > (os.cpu_count() or 1)

    @property
    def image_size(self) -> int:
        return FAMILIES[self.family].image_size

    def label(self) -> str:
        return f"{self.name} x{self.devices} b{self.batch}" + (f" @{self.link}" if self.link else "")

    def infer_args(self) -> list[str]:
        """Arguments of ``infer_distributed.py`` for this run (without --devices or --out)."""
        m = self.model
        args = ["--random-init", "--mode", self.mode, "--model", m["model"], "--groups", m["groups"],
                "--width", m["width"], "--batch", self.batch, "--threads", 1, "--image-size", self.image_size]
        if "stem" in m:
            args += ["--stem", m["stem"]]
        if self.mode == "branch":
            args += ["--exchange-dtype", self.exchange_dtype]
        if self.overlap > 1:
            args += ["--overlap", self.overlap]
        return [str(a) for a in args]


def grid_fits(devices: int) -> bool:
    """Whether ``devices`` factor as a grid of at least 2 x 2 tiles."""
    try:
        Tiling.for_mode("grid", devices)
    except SpatialError:
        return False
    return True


def configurations(batches: list[int], devices: list[int], links: list[str | None], dtypes: list[str],
                   overlap: int = 2, link_batches: list[int] | None = None, runtimes: tuple[str, ...] = ("torch",),
                   families: tuple[str, ...] = ("resnet34",)) -> list[BenchConfig]:
    """Every configuration, per family: baselines once per batch, the N-device ways once per batch, N and link.

    Emulated links (every entry of ``links`` but None, loopback) are run at ``link_batches`` only (default:
    every batch), with overlap only for the last (most compact) of ``dtypes``, the combination meant for
    weak links; data parallelism, which sends only inputs and logits, runs on loopback only. DeCNN's branches
    run on device counts that divide its groups, the spatial splits of the plain model (``modnn``, and ``grid``
    where the devices form a grid) on any. ``runtimes``: "torch" (``decnn infer``: every way) and "edge" (the
    device runtime: the baselines in ONNX Runtime, the branch and spatial splits).
    """
    configs = []
    for fam in families:
        f = FAMILIES[fam]

        def row(name: str, mode: str, n: int, b: int, model: dict, edge: bool = False, fam: str = fam, **kw) -> None:
            if ("edge" if edge else "torch") in runtimes:
                configs.append(BenchConfig(f"edge {name}" if edge else name, mode, n, b, dict(model),
                                           runtime="edge" if edge else "torch", family=fam, **kw))

        for b in batches:
            for edge in (False, True):
                row(f"{f.plain_name} single", "single", 1, b, f.plain, edge)
                row(f"{f.decnn_name} single", "single", 1, b, f.decnn, edge)
            for n in devices:
                for link in links:
                    if link is not None and link_batches is not None and b not in link_batches:
                        continue
                    if f.decnn["groups"] % n == 0:
                        for dtype in dtypes:
                            for edge in (True, False):
                                row(f"{f.decnn_name} branch {dtype}", "branch", n, b, f.decnn, edge,
                                    exchange_dtype=dtype, link=link)
                            if link is None or dtype == dtypes[-1]:
                                for edge in (False, True):
                                    row(f"{f.decnn_name} branch {dtype} overlap", "branch", n, b, f.decnn, edge,
                                        exchange_dtype=dtype, overlap=overlap, link=link)
                    for mode in ("modnn", "grid"):
                        if mode == "modnn" or grid_fits(n):
                            for edge in (True, False):
                                row(f"{f.plain_name} {mode}", mode, n, b, f.plain, edge, link=link)
                    row(f"{f.plain_name} pipeline", "pipeline", n, b, f.plain, link=link, overlap=min(overlap, b))
                    if link is None:
                        row(f"{f.plain_name} data", "data", n, b, f.plain)
    return configs
