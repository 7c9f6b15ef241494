"""The settings of one split-inference run, checked once before any process starts.

Imports nothing heavy: the command line checks its settings here before torch is loaded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from decnn.common.errors import ConfigError, option
from decnn.distributed.process import LOCAL_ENDPOINT, under_launcher
from decnn.wire.exchange import EXCHANGE_DTYPES
from decnn.wire.spatial import SPATIAL_MODES, SpatialError, Tiling

MODES = ("branch", *SPATIAL_MODES, "single", "data", "pipeline")
BACKENDS = ("torch", "onnxruntime")  # what computes a branch; torch.distributed exchanges either way
DEFAULT_DATA_ROOT = "data/tiny-imagenet-200"
_PLACEMENT = re.compile(r"^\d+(,\d+)*(/\d+(,\d+)*)*$")


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
    data_root: str | None = None  # the val images of --checkpoint runs; None: DEFAULT_DATA_ROOT
    num_images: int | None = None  # default: the whole val split, or 64 synthetic images
    batch: int = 1
    placement: str | None = None
    speeds: str | None = None  # modnn: the devices' relative speeds, e.g. "1,0.4" (band heights follow them)
    exchange_dtype: str = "fp32"
    backend: str = "torch"
    overlap: int = 1
    verify: bool = False
    check_exchange: bool = False  # a CRC-32 of every block of every exchange travels with it (decnn.common.checksum)
    warmup: int = 3
    timeout: float = 60.0
    threads: int | None = None
    pin_cores: bool = True  # where every local process can have cores of its own
    trace: str | None = None
    device: str = "cpu"
    out: str | None = None
    log_dir: str | None = "runs/infer"
    seed: int = 0
    elastic: bool = False  # survive lost devices (decnn.serve.elastic_model): --devices start here, others join
    min_devices: int = 1
    max_devices: int | None = None  # default: the model's groups
    duration: float | None = None  # elastic: keep calling (cycling the images) for this many seconds
    deadline: float = 120.0  # elastic: seconds a call may wait for an answer

    def tiling(self, devices: int) -> Tiling:
        """A spatial mode's tiles over ``devices`` (SpatialError where they cannot be cut)."""
        speeds = None
        if self.speeds is not None:
            try:
                speeds = [float(v) for v in self.speeds.split(",")]
            except ValueError:
                raise SpatialError(f"cannot read speeds {self.speeds!r}: give one number per device, e.g. "
                                   f"{option('speeds', '1,0.4')}") from None
        return Tiling.for_mode(self.mode, devices, speeds)

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

        need(self.mode in MODES,
             f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}, e.g. {option('mode', 'branch')}")
        need(self.random_init != (self.checkpoint is not None),
             "give either --checkpoint PATH (val images) or --random-init (synthetic images), "
             "e.g. --random-init --devices 2")
        need(self.image_size is None or self.random_init,
             "--image-size applies to synthetic images (--random-init); val images keep their training size")
        need(self.data_root is None or not self.random_init,
             "--data-root applies to --checkpoint runs (val images); --random-init runs on synthetic images")
        need(self.backend in BACKENDS, f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}, "
             f"e.g. {option('backend', 'onnxruntime')}")
        need(self.backend == "torch" or (self.mode == "branch" and self.checkpoint is not None),
             f"{option('backend', 'onnxruntime')} runs the ONNX graphs of shards: mode branch with a shard folder "
             "(from `decnn export CHECKPOINT --out SHARD_DIR --onnx`)")
        need(self.exchange_dtype in EXCHANGE_DTYPES,
             f"unknown exchange dtype {self.exchange_dtype!r}; choose one of {', '.join(EXCHANGE_DTYPES)}, "
             f"e.g. {option('exchange_dtype', 'int8')}")
        # overlap before batch: decnn.split sets batch to overlap, and its caller gave overlap
        examples = {"overlap": 2, "batch": 8, "nnodes": 2, "devices": 2, "num_images": 64, "threads": 1,
                    "min_devices": 1, "max_devices": 4}
        for name, example in examples.items():
            value = getattr(self, name)
            lowest = 0 if name == "devices" and self.elastic else 1  # elastic: every device may join from elsewhere
            need(value is None or value >= lowest,
                 f"{option(name)} must be >= {lowest}, e.g. {option(name, example)}; got {value}")
        if self.elastic:
            need(self.mode == "branch" and self.backend == "torch" and self.placement is None,
                 "--elastic runs mode branch with backend torch and places the groups itself whenever the "
                 "devices change: drop --mode, --backend and --placement")
            need(self.nnodes == 1 and not under_launcher(),
                 "--elastic starts --devices here; devices on other hosts join with `decnn device HOST:PORT "
                 "--nnodes MIN:MAX` (drop --nnodes and torchrun)")
            need(self.duration is None or self.duration > 0, f"--duration must be > 0 seconds; got {self.duration}")
            need(self.deadline > 0, f"--deadline must be > 0 seconds, e.g. --deadline 120; got {self.deadline:g}")
        need(self.elastic or (self.duration is None and self.min_devices == 1 and self.max_devices is None),
             "--duration, --min-devices and --max-devices apply to --elastic runs")
        need(self.image_size is None or self.image_size >= 8, f"--image-size must be >= 8, e.g. --image-size 64; "
             f"got {self.image_size}")
        need(self.warmup >= 0, f"--warmup must be >= 0, e.g. --warmup 3; got {self.warmup}")
        need(self.timeout > 0,
             f"{option('timeout')} must be > 0 seconds, e.g. {option('timeout', 60)}; got {self.timeout:g}")
        need(not (under_launcher() and self.devices is not None),
             f"under torchrun the launcher starts the processes: drop {option('devices')} "
             "(use torchrun's --nproc-per-node)")
        need(self.mode != "single" or self.world_size == 1,
             f"mode single runs the whole model in one process, not {self.world_size}: drop --devices")
        need(self.mode == "branch" or self.placement is None, f"{option('placement')} applies to mode branch")
        need(self.placement is None or bool(_PLACEMENT.match(self.placement)),
             f"cannot read {option('placement', self.placement)}: give each device's groups, devices separated by "
             f"'/', groups by ',', e.g. {option('placement', '0,1,2/3')} (4 groups: 3 on the first device, 1 on the "
             "second)")
        need(self.mode == "branch" or self.exchange_dtype == "fp32",
             f"{option('exchange_dtype')} applies to mode branch")
        if self.mode in SPATIAL_MODES:
            need(self.backend == "torch", f"mode {self.mode} runs with backend torch here; its ONNX graphs run on "
                 f"devices without torch: `decnn export CHECKPOINT --mode {self.mode} --onnx`, then `decnn edge`")
            try:
                self.tiling(self.world_size)
            except SpatialError as e:
                raise ConfigError(f"{option('mode', self.mode)}: {e}") from None
        need(self.speeds is None or self.mode == "modnn", f"{option('speeds')} applies to mode modnn (row bands "
             "in proportion to the devices' speeds)")
        need(self.mode == "branch" or not self.check_exchange, f"{option('check_exchange')} applies to mode branch")
        need(self.mode in ("branch", "pipeline") or self.overlap == 1,
             f"{option('overlap')} applies to modes branch (batches in flight) and pipeline (micro-batches)")
        need(self.device in ("cpu", "cuda"), f"unknown device {self.device!r}; choose cpu or cuda")
        if self.device == "cuda":
            import torch

            need(torch.cuda.is_available(), "--device cuda: no CUDA device is available here")
            need((self.devices or 1) <= torch.cuda.device_count(),
                 f"--devices {self.devices}: only {torch.cuda.device_count()} CUDA devices here")
        return self
