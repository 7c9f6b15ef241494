"""Profiles: what each device takes per segment and what each link carries, measured where the run will run.

Every rank of the process group times, concurrently as in a run, the branch it could hold for every
number of groups k = 1..G (prepared exactly as ``infer_distributed.py`` prepares it: BN folded,
channels-last, the same threads), the packing and codec work at each shuffle point for every exchange
dtype (the run's own :class:`ShuffleExchange`), and the pipeline baseline's units. Then the group measures
its links with the run's own collective: for every ordered pair (src, dst) an ``all_to_all`` in which only
src sends to dst, with a few bytes (the per-message latency) and with a large block (the bandwidth, TCP
overhead and all). Rank 0 writes it all as one JSON file.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from decnn.common.meters import agreement
from decnn.common.timing import Clock
from decnn.distributed.communicator import Communicator
from decnn.distributed.pinning import configure_threads
from decnn.distributed.transport import TorchTensors
from decnn.execution.branch import ShuffleExchange
from decnn.execution.messages import Done
from decnn.inference.inputs import Normalize, SyntheticImages
from decnn.inference.optimize import keep_freed_memory, prepare_for_inference
from decnn.inference.pipeline_mode import profile_units
from decnn.inference.settings import InferConfig
from decnn.inference.spec import ModelSpec, resolve_model
from decnn.inference.tensor_codecs import make_codec
from decnn.partition import Placement, extract_branches, local_exchange, run_branches_locally
from decnn.plan.spatial import time_spatial
from decnn.wire.exchange import EXCHANGE_DTYPES, WIRE_DTYPES, row_elements

PROFILE_VERSION = 1
_REPEATS = 5
_AGREEMENT_IMAGES = 32
_SMALL_BYTES = 64
_LARGE_START = 256 * 1024
_LARGE_MAX = 32 * 2**20
_LARGE_TARGET_S = 0.03  # grow the large block until one transfer takes this long


@dataclass
class DeviceProfile:
    """One device (rank), all times in seconds per batch of ``Profile.batch`` images."""

    rank: int
    host: str
    threads: int
    segment_s: list[list[float]]  # [k - 1][i]: segment i of a branch holding k groups; the head last
    pack_s: dict[str, list[list[float]]]  # dtype -> [k - 1][s]: pack + codec + unpack at shuffle point s (k < G)
    unit_s: list[float]  # the pipeline baseline's units (whole model, as mode pipeline runs it)
    spatial_s: dict[str, list[float]] = field(default_factory=dict)  # mode -> [step]: its tile, its head last


@dataclass
class LinkProfile:
    """Every ordered pair of ranks, measured with the run's all_to_all: ``[src][dst]`` (the diagonal is 0)."""

    latency_s: list[list[float]]  # one message of a few bytes
    bytes_per_s: list[list[float]]  # large blocks: (large - small) bytes / (time(large) - time(small))
    collective_s: dict[str, float] = field(default_factory=dict)  # a few bytes over the whole group, by name


@dataclass
class Profile:
    model: str
    groups: int
    width: float
    stem: str
    batch: int
    image_size: int
    channels: list[int]  # channels at each shuffle point (whole model)
    pixels: list[int]  # H * W at each shuffle point
    permutations: list[list[int]]  # each shuffle's channel permutation (exchange plans are derived from it)
    input_bytes: int  # per image (uint8)
    logits_bytes: int  # per image (fp32)
    unit_names: list[str]
    unit_out_bytes: list[int]  # per image, after each pipeline unit
    agreement: dict[str, dict[str, float]]  # exchange dtype -> agreement of its logits with fp32's
    devices: list[DeviceProfile]
    links: LinkProfile
    # With --spatial: each spatial mode's halo bytes per batch, [step][src][dst], and the pooled features' bytes
    halo_bytes: dict[str, list[list[list[int]]]] = field(default_factory=dict)
    pooled_bytes: int = 0
    version: int = PROFILE_VERSION

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Profile:
        data = json.loads(text)
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(f"profile version {data.get('version')!r} is not {PROFILE_VERSION}: measure it again "
                             "with `decnn plan profile`")
        data["devices"] = [DeviceProfile(**d) for d in data["devices"]]
        data["links"] = LinkProfile(**data["links"])
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        try:
            return cls.from_json(Path(path).read_text())
        except FileNotFoundError:
            raise ValueError(f"no profile at {path}; measure one with "
                             "`decnn plan profile --devices 2 --out profile.json`") from None


class _NoWire:
    """Stands in for the transport so that a ShuffleExchange's packing can be timed without peers (what would
    arrive is zeros)."""

    rank = 0

    def all_to_all(self, send, send_counts, recv, recv_counts) -> Done:
        recv.zero_()
        return Done()


def _branch_pair(model, groups: int, k: int):
    """Prepared branches of a placement whose device 0 holds k groups (and a second device the rest)."""
    devices = (tuple(range(k)),) + ((tuple(range(k, groups)),) if k < groups else ())
    return [prepare_for_inference(b) for b in extract_branches(model, Placement(groups, devices))]


@torch.inference_mode()
def time_device(spec: ModelSpec, batch: int, image_size: int, repeats: int = _REPEATS) -> dict:
    """This process's segment, packing and unit times (the fields of DeviceProfile but rank/host)."""
    model = spec.build()
    normalize = Normalize(spec.mean, spec.std, torch.device("cpu"))
    x = normalize(SyntheticImages(batch, image_size, spec.seed).batch(0, batch)[0])
    segment_s, pack_s = [], {d: [] for d in EXCHANGE_DTYPES}
    for k in range(1, spec.groups + 1):
        branches = _branch_pair(model, spec.groups, k)
        runs: list[list[float]] = [[] for _ in range(len(branches[0].segments) + 1)]
        outputs: dict[int, torch.Tensor] = {}

        def on_step(d, i, run, runs=runs, outputs=outputs):
            if d:
                return run()
            start = time.perf_counter()
            y = run()
            runs[i].append(time.perf_counter() - start)
            outputs[i] = y
            return y

        run_branches_locally(branches, x)  # warm-up
        for _ in range(repeats):
            run_branches_locally(branches, x, on_step=on_step)
        segment_s.append([statistics.median(t) for t in runs])
        for dtype in EXCHANGE_DTYPES:
            per_point = []
            for s, plan in enumerate(branches[0].plans if k < spec.groups else []):
                exchange = ShuffleExchange(s, plan, make_codec(dtype), TorchTensors(), _NoWire(),
                                           Clock())

                def pack(exchange=exchange, y=outputs[s]):
                    start = time.perf_counter()  # packing and the codec: there is no wire to wait for
                    exchange.start(y)
                    exchange.finish()
                    return time.perf_counter() - start

                pack()
                per_point.append(statistics.median(pack() for _ in range(repeats)))
            pack_s[dtype].append(per_point)
    sample = normalize(SyntheticImages(batch, image_size, spec.seed).batch(0, batch)[0])
    units = profile_units(prepare_for_inference(spec.build()), sample, repeats)
    return {"segment_s": segment_s, "pack_s": pack_s, "unit_s": [u.seconds * batch for u in units],
            "unit_names": [u.name for u in units], "unit_out_bytes": [u.out_bytes for u in units]}


@torch.inference_mode()
def measure_agreement(spec: ModelSpec, image_size: int, images: int = _AGREEMENT_IMAGES) -> dict[str, dict]:
    """Each exchange dtype's logits against fp32's, every shuffled activation round-tripping its codec."""
    model = spec.build()
    branches = extract_branches(model, Placement.even(spec.groups, spec.groups))
    normalize = Normalize(spec.mean, spec.std, torch.device("cpu"))
    x = normalize(SyntheticImages(images, image_size, spec.seed + 1).batch(0, images)[0])
    reference = run_branches_locally(branches, x)
    out = {}
    for dtype in EXCHANGE_DTYPES:
        codec = make_codec(dtype)

        def roundtrip(y, codec=codec, dtype=dtype):
            b, c, h, w = y.shape
            rows = y.reshape(b * c, h * w).contiguous()  # the wire's (image, channel) rows
            wire = TorchTensors().empty((b * c, row_elements(dtype, h * w)), WIRE_DTYPES[dtype])
            return codec.decode(codec.encode(rows, wire), torch.empty_like(rows)).reshape(b, c, h, w)

        logits = run_branches_locally(
            branches, x, exchange=lambda plans, outs: local_exchange(plans, [roundtrip(o) for o in outs]))
        out[dtype] = agreement(logits, reference)
    return out


def shapes(spec: ModelSpec, image_size: int) -> dict:
    """Channels and pixels at each shuffle point, and the per-image input and logits bytes."""
    model = spec.build()
    channels, pixels = [], []
    with torch.inference_mode():
        y = model.stem(torch.zeros(1, 3, image_size, image_size))
        for segment in model.segments[:-1]:
            y = segment(y)
            channels.append(y.shape[1])
            pixels.append(y.shape[2] * y.shape[3])
    return {"channels": channels, "pixels": pixels,
            "permutations": [s.permutation.tolist() for s in model.shuffles], "input_bytes": 3 * image_size**2,
            "logits_bytes": 4 * model.num_classes}


def _timed(comm: Communicator, fn, repeats: int) -> float:
    """Median over ``repeats`` of the slowest rank's time for ``fn()`` (each after a tiny all_to_all that
    lines the ranks up); the same value on every rank."""
    n = comm.world_size
    sync_out, sync_in, ones = torch.empty(n, dtype=torch.uint8), torch.zeros(n, dtype=torch.uint8), [1] * n
    times = []
    for _ in range(repeats):
        comm.all_to_all(sync_out, sync_in, ones, ones)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    gathered = comm.gather_object(times)
    return comm.broadcast_object(statistics.median(max(ts) for ts in zip(*gathered)) if comm.rank == 0 else None)


def _all_to_all(comm: Communicator, sizes: list[list[int]]):
    """A function running the all_to_all in which rank s sends ``sizes[s][d]`` bytes to rank d."""
    me, n = comm.rank, comm.world_size
    send = sizes[me]
    recv = [sizes[s][me] for s in range(n)]
    out, inp = torch.empty(sum(recv), dtype=torch.uint8), torch.zeros(sum(send), dtype=torch.uint8)
    return lambda: comm.all_to_all(out, inp, recv, send)


def _pair(n: int, src: int, dst: int, nbytes: int) -> list[list[int]]:
    return [[nbytes if (s, d) == (src, dst) else 0 for d in range(n)] for s in range(n)]


def measure_links(comm: Communicator) -> LinkProfile:
    """Per-message latency and bandwidth of every ordered pair, and the small collectives' latency."""
    n = comm.world_size
    latency = [[0.0] * n for _ in range(n)]
    rate = [[0.0] * n for _ in range(n)]
    for src in range(n):
        for dst in range(n):
            if src == dst:
                continue
            small = _timed(comm, _all_to_all(comm, _pair(n, src, dst, _SMALL_BYTES)), 3 * _REPEATS)
            large = _LARGE_START
            while True:
                t_large = _timed(comm, _all_to_all(comm, _pair(n, src, dst, large)), 3)
                if t_large >= _LARGE_TARGET_S or large >= _LARGE_MAX:
                    break
                large = min(_LARGE_MAX, large * max(2, int(_LARGE_TARGET_S / max(t_large, 1e-4))))
            latency[src][dst] = small
            rate[src][dst] = (large - _SMALL_BYTES) / max(t_large - small, 1e-9)
    everyone = [[0 if s == d else _SMALL_BYTES for d in range(n)] for s in range(n)]
    collective = {"all_to_all": _timed(comm, _all_to_all(comm, everyone), 3 * _REPEATS)}
    return LinkProfile(latency, rate, collective)


def measure_profile(comm: Communicator, spec: ModelSpec, batch: int, image_size: int,
                    spatial: bool = False) -> Profile | None:
    """Every rank times its device (with ``spatial`` also its tiles of the spatial splits), then the group
    measures its links; returns the profile on rank 0."""
    mine = time_device(spec, batch, image_size)
    spatial_s, halos, pooled = (time_spatial(spec, batch, image_size, comm.world_size, comm.rank) if spatial
                                else ({}, {}, 0))
    device = DeviceProfile(comm.rank, socket.gethostname(), torch.get_num_threads(), mine["segment_s"],
                           mine["pack_s"], mine["unit_s"], spatial_s)
    devices = comm.gather_object(device)
    links = measure_links(comm)
    if comm.rank != 0:
        return None
    return Profile(
        model=spec.name, groups=spec.groups, width=spec.width, stem=spec.stem, batch=batch,
        image_size=image_size, **shapes(spec, image_size), unit_names=mine["unit_names"],
        unit_out_bytes=mine["unit_out_bytes"], agreement=measure_agreement(spec, image_size),
        devices=devices, links=links, halo_bytes=halos, pooled_bytes=pooled,
    )


@dataclass(frozen=True)
class ProfileArgs:
    infer: InferConfig
    out: str
    spatial: bool = False  # also time the spatial splits (decnn.plan.spatial)


def profile_rank(args: ProfileArgs) -> None:
    """One rank of ``profile`` (the function every process runs)."""
    cfg = args.infer
    configure_threads(int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
                      cfg.threads, cfg.pin_cores)
    keep_freed_memory()
    spec = resolve_model(cfg)
    comm = Communicator(cfg.timeout)
    try:
        profile = measure_profile(comm, spec, cfg.batch, cfg.image_size or spec.input_size, args.spatial)
    finally:
        comm.close()
    if profile is not None:
        profile.save(args.out)
        print(f"wrote {args.out}", flush=True)
