"""The configurations a benchmark compares: the 1-device baselines and every way to use N devices."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

BASELINE = {"model": "decnn_resnet34", "groups": 1, "width": 1.0}  # plain ResNet-34, what users start from
DECNN = {"model": "decnn_resnet34", "groups": 4, "width": 1.5}  # the paper's model


@dataclass(frozen=True)
class BenchConfig:
    """One run of ``infer_distributed.py``; ``link`` is None for a single process or plain loopback."""

    name: str
    mode: str
    devices: int
    batch: int
    model: dict = field(default_factory=lambda: dict(DECNN))
    exchange_dtype: str = "fp32"
    overlap: int = 1
    link: str | None = None
    runtime: str = "torch"  # torch (infer_distributed.py) or edge (decnn edge: ONNX Runtime + MPI)

    @property
    def oversubscribed(self) -> bool:
        return self.devices > (os.cpu_count() or 1)

    def label(self) -> str:
        return f"{self.name} x{self.devices} b{self.batch}" + (f" @{self.link}" if self.link else "")

    def infer_args(self) -> list[str]:
        """Arguments of ``infer_distributed.py`` for this run (without --devices or --out)."""
        m = self.model
        args = ["--random-init", "--mode", self.mode, "--model", m["model"], "--groups", m["groups"],
                "--width", m["width"], "--batch", self.batch, "--threads", 1]
        if self.mode == "branch":
            args += ["--exchange-dtype", self.exchange_dtype]
        if self.overlap > 1:
            args += ["--overlap", self.overlap]
        return [str(a) for a in args]


def configurations(batches: list[int], devices: list[int], links: list[str | None], dtypes: list[str],
                   overlap: int = 2, link_batches: list[int] | None = None, runtimes: tuple[str, ...] = ("torch",)
                   ) -> list[BenchConfig]:
    """Every configuration: baselines once per batch, the N-device ways once per batch, N and link.

    Emulated links (every entry of ``links`` but None, loopback) are run at ``link_batches`` only (default:
    every batch), with overlap only for the last (most compact) of ``dtypes``, the combination meant for
    weak links; data parallelism, which sends only inputs and logits, runs on loopback only. With "edge" in
    ``runtimes``, the device runtime adds its own baselines (the same two models in ONNX Runtime) and its
    branch split at every batch, N, link and dtype, with overlap where the torch split has it.
    """
    configs = []
    for b in batches:
        configs.append(BenchConfig("resnet34 single", "single", 1, b, dict(BASELINE)))
        configs.append(BenchConfig("decnn single", "single", 1, b))
        if "edge" in runtimes:
            configs.append(BenchConfig("edge resnet34 single", "single", 1, b, dict(BASELINE), runtime="edge"))
            configs.append(BenchConfig("edge decnn single", "single", 1, b, runtime="edge"))
        for n in devices:
            if DECNN["groups"] % n:
                continue
            for link in links:
                if link is not None and link_batches is not None and b not in link_batches:
                    continue
                for dtype in dtypes:
                    if "edge" in runtimes:
                        configs.append(BenchConfig(f"edge decnn branch {dtype}", "branch", n, b, exchange_dtype=dtype,
                                                   link=link, runtime="edge"))
                    configs.append(BenchConfig(f"decnn branch {dtype}", "branch", n, b, exchange_dtype=dtype,
                                               link=link))
                    if link is None or dtype == dtypes[-1]:
                        configs.append(BenchConfig(f"decnn branch {dtype} overlap", "branch", n, b,
                                                   exchange_dtype=dtype, overlap=overlap, link=link))
                        if "edge" in runtimes:
                            configs.append(BenchConfig(f"edge decnn branch {dtype} overlap", "branch", n, b,
                                                       exchange_dtype=dtype, overlap=overlap, link=link,
                                                       runtime="edge"))
                configs.append(BenchConfig("resnet34 pipeline", "pipeline", n, b, dict(BASELINE), link=link,
                                           overlap=min(overlap, b)))
                if link is None:
                    configs.append(BenchConfig("resnet34 data", "data", n, b, dict(BASELINE)))
    return configs
