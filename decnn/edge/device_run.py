"""One device's timed run under ``mpiexec`` (what ``decnn edge`` launches on every device):

    mpiexec -n 2 python -m decnn.edge.device_run shards/ --batch 1 --images 64 --verify --out results/edge.json

Rank r runs device r's branch of the export in ``shards/`` (``--single``: one rank runs the whole model's
graph, the 1-device baseline). Rank 0 reads the images (``--inputs FILE.npz`` with ``images`` uint8
[N, 3, H, W] and optionally ``labels``, or seeded random ones), times every batch after the warm-up, and
writes the run's record: the console table, JSON (``--out``) and TensorBoard (``--log-dir``, where the
tensorboard package is installed).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from decnn.common.checksum import ExchangeCorrupted
from decnn.common.exitcodes import INTERRUPTED, RUNTIME, USAGE
from decnn.common.record import MB, Latency, RunRecord, format_table
from decnn.common.timing import breakdowns, peak_rss_bytes, percentiles_ms, reset_peak_rss
from decnn.common.verification import VerificationError, check, compare
from decnn.edge.branches import EdgeSplit, edge_whole
from decnn.edge.bundle import DeviceBundle, whole_model
from decnn.edge.numpy_codecs import make_codec
from decnn.edge.profile import predict_run
from decnn.edge.spatial import EdgeSpatial, SpatialBundle, tiling_of
from decnn.edge.transport import MpiComm, MpiTransport, PeerError
from decnn.emulation.faults import inject_fault
from decnn.wire.exchange import EXCHANGE_DTYPES
from decnn.wire.export_format import BundleError, read_manifest, split_mode
from decnn.wire.spatial import SPATIAL_MODES

IDENTITY = "[decnn-edge]"  # the start line a rank prints for ``decnn edge`` (which keeps it off the console)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m decnn.edge.device_run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", help="a folder written by `decnn export CHECKPOINT --onnx`")
    p.add_argument("--single", action="store_true", help="run the whole model's graph on one rank (the baseline)")
    p.add_argument("--transport", default=None, help=argparse.SUPPRESS)  # set by `decnn edge`: mpi-shm / mpi-tcp
    add_run_arguments(p)
    return p


def add_run_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup, leave_out: tuple[str, ...] = ()):
    """The options of a device's run that ``decnn edge`` and ``decnn deploy`` pass to every device as they are
    (but those in ``leave_out``, which the caller takes itself)."""

    def add(flag: str, **kwargs) -> None:
        if flag not in leave_out:
            p.add_argument(flag, **kwargs)

    add("--mode", choices=SPATIAL_MODES, help="a spatial export: run it as row bands (modnn) or tiles (grid) on "
        "however many devices there are (default: the export's mode)")
    add("--speeds", type=speeds_arg, help="modnn: the devices' relative speeds, e.g. 1,0.4")
    add("--batch", type=_positive, default=1, help="images per batch (default 1)")
    add("--images", type=_positive, default=64, help="images to time (default 64; at most the inputs')")
    add("--inputs", help="an .npz with `images` (uint8 N,3,H,W) and optionally `labels`")
    add("--image-size", type=_positive, help="random images' size (default: the export's)")
    add("--warmup", type=_non_negative, default=3, help="untimed steps first (default 3)")
    add("--overlap", type=_positive, default=1, help="batches in flight (default 1)")
    add("--exchange-dtype", choices=EXCHANGE_DTYPES, default="fp32",
        help="what the shuffle points send (default fp32)")
    add("--check-exchange", action="store_true", help="send a CRC-32 of every block with each "
        "all-to-all and end the run at the first block that arrives with other bytes")
    add("--threads", type=_positive, help="ONNX Runtime threads (default: cores / local ranks)")
    add("--no-pin-cores", dest="pin_cores", action="store_false", help="leave the cores unpinned")
    add("--timeout", type=float, default=60.0, help="seconds a peer may stay silent (default 60)")
    add("--verify", action="store_true", help="also run model.onnx on rank 0: agreement with the split; "
        "beyond the exchange's bound the run fails (exit 1)")
    add("--predict", action="store_true", help="before the timed run, profile every rank's steps and "
        "every link, and record the cost model's prediction beside the measurement (one batch in flight)")
    add("--out", help="write the run's record as JSON")
    add("--logits", help="write rank 0's logits of the timed images as .npy")
    add("--log-dir", help="TensorBoard runs folder (e.g. runs/infer)")
    add("--seed", type=int, default=0, help="seed of the random images (default 0)")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.log_dir and importlib.util.find_spec("tensorboard") is None:
            raise InputError("--log-dir needs the tensorboard package on rank 0's device (pip install tensorboard)")
        if args.single and args.check_exchange:
            raise InputError("--check-exchange checks the exchanges of a split; --single runs none: drop one")
        manifest = read_manifest(args.directory)
    except (BundleError, InputError) as e:
        return exit_now(f"error: {e}", USAGE)
    return as_device(args.timeout, lambda comm: _run_and_write(args, comm, manifest))


def as_device(timeout: float, body) -> int:
    """Join the MPI job and run ``body(comm)`` as one device; every failure is one line and this rank's exit
    code (mpiexec then ends the other ranks)."""
    comm = None
    try:
        comm = MpiComm(timeout)
        if os.environ.get("DECNN_EDGE_LAUNCHER"):
            # ';' ends it: mpiexec may put another rank's output right behind it on the same line.
            print(f"{IDENTITY} rank {comm.rank} pid {os.getpid()} host {comm.hosts[comm.rank]};", file=sys.stderr,
                  flush=True)
        body(comm)
    except KeyboardInterrupt:
        return exit_now("interrupted", INTERRUPTED)
    except PeerError as e:  # the lowest rank still answering reports it, once
        return exit_now(f"error: {e}" if comm is None or comm.first_survivor(e) else "", RUNTIME)
    except (BundleError, InputError) as e:
        return exit_now(f"error: {_where(comm)}{e}", USAGE)
    except (VerificationError, ExchangeCorrupted) as e:
        return exit_now(f"error: {e}", RUNTIME)
    except Exception as e:
        return exit_now(f"error: {_where(comm)}failed: {type(e).__name__}: {e}", RUNTIME)
    return 0


def _where(comm: MpiComm | None) -> str:
    return "" if comm is None else f"rank {comm.rank} (host {comm.hosts[comm.rank]}): "


def _run_and_write(args, comm: MpiComm, manifest: dict) -> None:
    result = run(args, comm, manifest, _Images(args, manifest, comm))
    if result is not None:
        write(*result, args)
        check(result[0].to_dict())


def run(args, comm: MpiComm, manifest: dict, images: _Images) -> tuple[RunRecord, list[float]] | None:
    """This rank's part: load, warm up, time every batch, gather the stats; on rank 0 the record and each
    image's batch latency."""
    inject_fault(comm.rank, "setup")
    cores = pin_cores(args.threads, args.pin_cores)
    threads = args.threads or len(cores)
    spatial = split_mode(manifest) != "branch"
    if (args.mode or args.speeds) and not spatial:
        raise InputError("--mode and --speeds apply to a spatial export (decnn export --mode modnn|grid)")
    devices = 1 if args.single else comm.size if spatial else len(manifest["devices"])
    if comm.size != devices:
        raise BundleError(f"{args.directory} is exported for {devices} device(s), but mpiexec started "
                          f"{comm.size} rank(s): run `mpiexec -n {devices} ...`")
    if args.single:
        mode = edge_whole(whole_model(args.directory, threads), manifest["mean"], manifest["std"])
        param_bytes = sum(d["param_bytes"] for d in manifest["devices"])
    else:
        mode = open_split(args, manifest, comm, threads)
        param_bytes = mode.param_bytes
    if spatial and not args.single and images.size != manifest["image_size"]:
        raise InputError(f"{args.directory} is a {split_mode(manifest)} export for {manifest['image_size']}x"
                         f"{manifest['image_size']} images, not {images.size}x{images.size}: export again with "
                         f"--image-size {images.size}")
    release_freed_memory()
    sizes = [min(args.batch, images.count - i) for i in range(0, images.count, args.batch)]
    steps = [sizes[i:i + mode.batches_per_step] for i in range(0, len(sizes), mode.batches_per_step)]
    size = images.size
    reset_peak_rss()
    for _ in range(max(args.warmup, args.predict)):
        mode.step(images.load(steps[0], 0, comm.rank))
    prediction = None
    if args.predict and not args.single and args.overlap == 1:
        prediction = predict_run(mode, images.load(steps[0][:1], 0, comm.rank), comm, _result_bytes(mode, manifest,
                                                                                                     steps[0][0]))
    mode.reset_stats()
    counts_before = comm.counts.copy()
    latency, logits, first, busy = [], [], 0, 0.0
    for s, step in enumerate(steps):
        inject_fault(comm.rank, str(s))
        inputs = images.load(step, first, comm.rank)
        start = time.perf_counter()
        out = mode.step(inputs)
        elapsed = time.perf_counter() - start
        busy += elapsed
        latency += [elapsed] * len(step)
        logits += out or []
        first += sum(step)
    stats = {"rank": comm.rank, "host": comm.hosts[comm.rank], "threads": threads, "cores": cores,
             "param_bytes": param_bytes, "peak_rss_bytes": peak_rss_bytes(), "step_s": busy,
             "collectives_per_batch": {k: (n - counts_before[k]) / len(sizes) for k, n in comm.counts.items()
                                       if n > counts_before[k]},
             **mode.clock.stats(), **mode.rank_stats()}
    all_stats = comm.gather_object(stats)
    if comm.rank != 0:
        return None
    logits = np.concatenate(logits)
    if args.logits:
        np.save(args.logits, logits)
    quality = images.quality(logits, args.verify and not args.single, args.directory, threads, args.exchange_dtype)
    record = _record(args, manifest, devices, size, sizes, latency, busy, all_stats, quality)
    if prediction is not None:
        record = dataclasses.replace(record, predicted_latency_ms=1e3 * prediction.step_s,
                                     predicted_compute_ms=1e3 * prediction.compute_s,
                                     predicted_transfer_ms=1e3 * prediction.transfer_s,
                                     measured_for_prediction_ms=record.latency_ms.p50)
    return record, latency


def _result_bytes(split: EdgeSplit | EdgeSpatial, manifest: dict, batch: int) -> int:
    """What a rank's reduce carries per batch: DeCNN's partial logits, a spatial split's pooled tile."""
    if isinstance(split, EdgeSplit):
        return manifest["num_classes"] * 4 * batch
    return int(split.rank_stats()["pooled_bytes_per_image"] * batch)


def open_split(args, manifest: dict, comm: MpiComm, threads: int) -> EdgeSplit | EdgeSpatial:
    """This rank's part of the export: DeCNN's branch, or its tiles of a spatial split (fp32, a batch at a time)."""
    if split_mode(manifest) == "branch":
        codec = make_codec(args.exchange_dtype)
        return EdgeSplit(DeviceBundle(args.directory, comm.rank, threads), comm, codec, args.overlap,
                         args.check_exchange)
    if args.exchange_dtype != "fp32" or args.overlap != 1 or args.check_exchange:
        raise InputError(f"{args.directory} holds a {split_mode(manifest)} split, which exchanges fp32 halos one "
                         "batch at a time: drop --exchange-dtype, --overlap and --check-exchange")
    tiling = tiling_of(manifest, comm.size, args.mode, args.speeds)
    return EdgeSpatial(SpatialBundle(args.directory, comm.rank, threads), MpiTransport(comm), tiling)


class InputError(ValueError):
    """Inputs that cannot be read (``--inputs``), or a setting this device cannot honour."""


class _Images:
    """Rank 0's uint8 images (from ``--inputs``, read on rank 0's host only, or seeded random ones) and their
    labels, if any; every rank learns their count and size."""

    def __init__(self, args, manifest: dict, comm: MpiComm):
        self.labels, self.data = None, None
        shape = np.zeros(2, np.int64)
        if comm.rank == 0:
            if args.inputs:
                self.data, self.labels = _read_inputs(args.inputs, args.images)
            else:
                s = args.image_size or manifest["image_size"]
                self.data = np.random.default_rng(args.seed).integers(0, 256, (args.images, 3, s, s), dtype=np.uint8)
            shape[:] = len(self.data), self.data.shape[-1]
        comm.bcast(shape, 0).wait()
        self.count, self.size = int(shape[0]), int(shape[1])

    def load(self, sizes: list[int], first: int, rank: int) -> list[np.ndarray]:
        """A step's batches: the images on rank 0, buffers of the same shapes elsewhere."""
        out, start = [], first
        for n in sizes:
            out.append(np.ascontiguousarray(self.data[start:start + n]) if rank == 0
                       else np.empty((n, 3, self.size, self.size), np.uint8))
            start += n
        return out

    def quality(self, logits: np.ndarray, verify: bool, directory: str, threads: int, exchange_dtype: str) -> dict:
        """Top-1/top-5 against the labels; with ``verify``, the comparison with the whole model's graph
        (decnn.common.verification)."""
        out = {}
        if self.labels is not None:
            top5 = np.argsort(-logits, axis=1)[:, :5]
            labels = self.labels[: len(logits)]
            out["top1"] = float((top5[:, 0] == labels).mean() * 100)
            out["top5"] = float((top5 == labels[:, None]).any(1).mean() * 100)
        if verify:
            manifest = read_manifest(directory)
            whole = edge_whole(whole_model(directory, threads), manifest["mean"], manifest["std"])
            reference = np.concatenate(whole.step([self.data[: len(logits)]]))
            out.update(compare(logits, reference, exchange_dtype, "quantization" in manifest))
        return out


def _record(args, manifest: dict, devices: int, size: int, sizes: list[int], latency: list[float], busy: float,
            stats: list[dict], quality: dict) -> RunRecord:
    images = sum(sizes)
    breakdown = breakdowns(stats, len(sizes))
    mode = "single" if args.single else args.mode or split_mode(manifest)
    per_point = [sum(col) / images for col in zip(*(s["sent_bytes_per_point"] for s in stats))]
    fp32 = sum(sum(s["fp32_bytes_per_point"]) for s in stats) / images
    if mode == "branch":
        result_bytes = manifest["num_classes"] * 4 * (devices - 1)
    else:  # a spatial split: the halos of the steps that exchange, and the pooled tiles
        per_point = [b for b in per_point if b]
        result_bytes = stats[0].get("pooled_bytes_per_image", 0) * (devices - 1)
    return RunRecord(
        model=manifest["model_name"], groups=manifest["groups"], width=manifest["width"], stem=manifest["stem"],
        mode=mode, devices=devices, placement=manifest["placement"] if mode == "branch" else None,
        batch=args.batch, overlap=args.overlap,
        exchange_dtype=args.exchange_dtype, backend="onnxruntime",
        transport=None if devices == 1 else args.transport or "mpi", image_size=size, images=images,
        warmup=args.warmup, checkpoint=manifest.get("source"),
        latency_ms=Latency(**percentiles_ms(latency)), throughput_ips=images / busy if busy else 0.0,
        bytes_per_image=sum(per_point), bytes_per_image_per_point=per_point,
        exchanges_per_batch=sum(1 for b in per_point if b),
        bytes_saved_vs_fp32=(1 - sum(per_point) / fp32) if fp32 else 0.0,
        input_bytes_per_image=3 * size * size * (devices - 1),
        result_bytes_per_image=result_bytes,
        params_per_device_mb=max(s["param_bytes"] for s in stats) / MB,
        peak_rss_mb=max(s["peak_rss_bytes"] for s in stats) / MB,
        params_per_rank=[s["param_bytes"] for s in stats], peak_rss_per_rank=[s["peak_rss_bytes"] for s in stats],
        breakdown_per_rank=[dataclasses.asdict(b) for b in breakdown],
        threads_per_rank=[s["threads"] for s in stats], cores_per_rank=[s["cores"] for s in stats],
        hosts=sorted({s["host"] for s in stats}), collectives_per_batch=[s["collectives_per_batch"] for s in stats],
        **quality,
    )


def _read_inputs(path: str, count: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The first ``count`` images (and labels) of an ``--inputs`` file."""
    try:
        with np.load(path) as data:
            arrays = {k: data[k][:count] for k in ("images", "labels") if k in data}
    except (OSError, ValueError) as e:
        raise InputError(f"--inputs {path}: {e}") from None
    images = arrays.get("images")
    if images is None or images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"{path} needs `images`, uint8 [N, 3, H, W] (and optionally `labels`), e.g. from "
                         "`decnn data sample`")
    return images, arrays.get("labels")


def write(record: RunRecord, latency_s: list[float], args) -> None:
    """The record as JSON (``--out``), to TensorBoard (``--log-dir``) and as the console table."""
    if args.log_dir:
        from decnn.common.tensorboard import log_run

        record = log_run(record, latency_s, args.log_dir)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record.to_dict(), indent=2) + "\n")
    print(format_table(record), flush=True)


def release_freed_memory() -> None:
    """Hand the heap that loading the graphs freed back to the system (glibc keeps it otherwise): the
    protobufs and the initializers' first copies, which ONNX Runtime drops once the session is built."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to hand back this way


def pin_cores(threads: int | None, pin: bool) -> list[int]:
    """This rank's share of the host's cores (MPICH says how many ranks share the host), pinned if each gets
    cores of its own."""
    local, local_ranks = int(os.environ.get("MPI_LOCALRANKID", 0)), int(os.environ.get("MPI_LOCALNRANKS", 1))
    cores = sorted(os.sched_getaffinity(0))
    per = threads or max(1, len(cores) // local_ranks)
    mine = cores[local * per:(local + 1) * per]
    if pin and len(mine) == per:
        os.sched_setaffinity(0, mine)
        return mine
    return cores


def exit_now(line: str, code: int) -> int:
    if code == USAGE and os.environ.get("DECNN_EDGE_LAUNCHER"):
        # mpiexec may exit with a peer's code when it ends the others: tell `decnn edge` that the input was bad.
        print(f"{IDENTITY} usage;", file=sys.stderr, flush=True)
    if line:
        print(line, file=sys.stderr, flush=True)
    # MPI_Finalize would wait for peers that may never come: leave at once, mpiexec ends the other ranks.
    os._exit(code)


def speeds_arg(text: str) -> list[float]:
    """``--speeds 1,0.4``: one relative speed per device."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"give one relative speed per device, e.g. 1,0.4; got {text!r}") from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
