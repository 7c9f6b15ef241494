"""The settings of one split-inference run, checked once before any process starts."""

from __future__ import annotations

import os
from dataclasses import dataclass

from decnn.comm import LOCAL_ENDPOINT, under_launcher
from decnn.errors import ConfigError
from decnn.inference.codec import EXCHANGE_DTYPES

MODES = ("branch", "single", "data", "pipeline")


@dataclass(frozen=True)
class InferConfig:
    mode: str = "branch"
    devices: int | None = None  # processes on this node; None: 1, or whatever torchrun started
    nnodes: int = 1
    rdzv_endpoint: str = LOCAL_ENDPOINT
    checkpoint: str | None = None
    random_init: bool = False
    model: str | None = None  # with --random-init: decnn_resnet34, G4, x1.5, tiny stem unless given
    groups: int | None = None
    width: float | None = None
    stem: str | None = None
    image_size: int | None = None  # synthetic images only; default: the model's input size
    data_root: str = "data/tiny-imagenet-200"
    num_images: int | None = None  # default: the whole val split, or 64 synthetic images
    batch: int = 1
    placement: str | None = None
    exchange_dtype: str = "fp32"
    overlap: int = 1
    verify: bool = False
    warmup: int = 3
    timeout: float = 60.0
    threads: int | None = None
    pin_cores: bool = False
    device: str = "cpu"
    out: str | None = None
    log_dir: str | None = "runs/infer"
    seed: int = 0

    @property
    def world_size(self) -> int:
        if under_launcher():
            return int(os.environ["WORLD_SIZE"])
        return (self.devices or 1) * self.nnodes

    def check(self) -> InferConfig:
        """Raise ConfigError for settings that cannot work; return self."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.mode in MODES, f"unknown mode {self.mode!r}; choose one of {MODES}")
        need(self.random_init != (self.checkpoint is not None),
             "give either --checkpoint PATH (val images) or --random-init (synthetic images)")
        need(self.image_size is None or self.random_init,
             "--image-size applies to synthetic images (--random-init); val images keep their size")
        need(self.exchange_dtype in EXCHANGE_DTYPES,
             f"unknown exchange dtype {self.exchange_dtype!r}; choose one of {EXCHANGE_DTYPES}")
        for name in ("batch", "nnodes", "overlap"):
            need(getattr(self, name) >= 1, f"--{name.replace('_', '-')} must be >= 1")
        need(self.devices is None or self.devices >= 1, "--devices must be >= 1")
        need(self.num_images is None or self.num_images >= 1, "--num-images must be >= 1")
        need(self.image_size is None or self.image_size >= 8, "--image-size must be >= 8")
        need(self.warmup >= 0, "--warmup must be >= 0")
        need(self.timeout > 0, "--timeout must be > 0 seconds")
        need(self.threads is None or self.threads >= 1, "--threads must be >= 1")
        need(not (under_launcher() and self.devices is not None),
             "under torchrun the launcher starts the processes: drop --devices (use torchrun's --nproc-per-node)")
        need(self.mode != "single" or self.world_size == 1,
             f"mode single runs the whole model in one process, not {self.world_size}")
        need(self.mode == "branch" or self.placement is None, "--placement applies to mode branch")
        need(self.mode == "branch" or self.exchange_dtype == "fp32", "--exchange-dtype applies to mode branch")
        need(self.mode in ("branch", "pipeline") or self.overlap == 1,
             "--overlap applies to modes branch (batches in flight) and pipeline (micro-batches)")
        need(self.mode != "pipeline" or self.batch % self.overlap == 0,
             f"mode pipeline splits each batch into --overlap={self.overlap} micro-batches: "
             f"--batch {self.batch} is not divisible by it")
        need(self.device in ("cpu", "cuda"), f"unknown device {self.device!r}; choose cpu or cuda")
        if self.device == "cuda":
            import torch

            need(torch.cuda.is_available(), "--device cuda: no CUDA device is available here")
            need((self.devices or 1) <= torch.cuda.device_count(),
                 f"--devices {self.devices}: only {torch.cuda.device_count()} CUDA devices here")
        return self
