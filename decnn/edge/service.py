"""The device runtime as a persistent service: ``decnn.split(folder, backend="edge")`` from a caller that has
torch, or :class:`EdgeService` from one that has only numpy.

The caller starts ``mpiexec`` with this module on every device and talks to rank 0 through mpiexec's standard
input and output (mpiexec forwards its stdin to rank 0): a request is a header of int64s (operation, batch,
channels, height, width, dtype code) and the images' bytes; rank 0 broadcasts the header, every rank runs its
split's step (which broadcasts the images), and rank 0 writes back the status, the logits' shape and bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from decnn.common.exitcodes import USAGE
from decnn.common.timing import peak_rss_bytes
from decnn.edge.device_run import as_device, exit_now, open_split, pin_cores, release_freed_memory, speeds_arg
from decnn.edge.launch import Report, mpiexec_command
from decnn.edge.transport import MpiComm
from decnn.wire.exchange import EXCHANGE_DTYPES
from decnn.wire.export_format import BundleError, read_manifest
from decnn.wire.spatial import SPATIAL_MODES

STOP, RUN, STATS = 0, 1, 2
DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))  # what a request may carry, by its code in the header
_HEADER = 6  # int64s: op, B, C, H, W, dtype code
# Starts every answer: mpiexec writes its own report of a dead process to the same stdout.
_MAGIC = b"DECNN-EDGE-ANSWER"


class ServiceError(RuntimeError):
    """The devices failed or could not start; the service is closed."""


class EdgeService:
    """A split served by ``mpiexec`` over the devices of the export in ``directory``; call it with uint8 images
    ``[B, 3, H, W]`` (or float32 normalised ones) to get float32 logits ``[B, classes]``."""

    def __init__(self, directory: str | Path, devices: int | None = None, exchange_dtype: str = "fp32",
                 overlap: int = 1, threads: int | None = None, timeout: float = 60.0, hosts: list[str] | None = None):
        args = ["--exchange-dtype", exchange_dtype, "--overlap", str(overlap), "--timeout", str(timeout),
                *(["--threads", str(threads)] if threads else [])]
        cmd = mpiexec_command(directory, args, module="decnn.edge.service", devices=devices, hosts=hosts)
        self.timeout, self.report, self.closed = timeout, Report(), False
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._stderr = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr.start()
        try:
            self.workers = self._request(STATS, None)
        except BaseException:
            self.close()
            raise

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images)
        if images.dtype not in DTYPES or images.ndim != 4:
            raise TypeError(f"images of dtype {images.dtype} and shape {images.shape}: pass uint8 (or float32 "
                            "normalised) images [B, 3, H, W]")
        return self._request(RUN, images)

    def stats(self) -> list[dict]:
        """Per rank, now: host, pid, parameter bytes held and peak RSS."""
        return self._request(STATS, None)

    def _request(self, op: int, images: np.ndarray | None):
        if self.closed:
            raise ServiceError("this split is closed; start a new one")
        shape, code = (images.shape, DTYPES.index(images.dtype)) if images is not None else ((0, 0, 0, 0), 0)
        try:
            self._proc.stdin.write(np.array([op, *shape, code], np.int64).tobytes())
            if images is not None:
                self._proc.stdin.write(images.tobytes())
            self._proc.stdin.flush()
            head = self._read(len(_MAGIC) + 24)
            if not head.startswith(_MAGIC):  # mpiexec's report instead: keep it for the error
                self.report.feed((head + self._proc.stdout.read()).decode(errors="replace"))
                raise EOFError
            status, rows, cols = np.frombuffer(head[len(_MAGIC):], np.int64)
            payload = self._read(int(rows * cols * 4) if op == RUN and status == 0 else int(rows))
        except (OSError, EOFError, ValueError):
            raise self._failed() from None
        if status != 0:
            raise ServiceError(f"the devices refused the request: {payload.decode()}")
        return np.frombuffer(payload, np.float32).reshape(rows, cols).copy() if op == RUN else json.loads(payload)

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self._proc.stdout.read(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _read_stderr(self) -> None:
        for line in self._proc.stderr:
            shown = self.report.feed(line.decode(errors="replace"))
            if shown is not None and not shown.startswith("error:"):
                sys.stderr.write(shown)

    def _failed(self) -> ServiceError:
        code = self._proc.wait()
        self._stderr.join(timeout=5)
        self.close()
        return ServiceError(f"the split's devices failed: {self.report.failure(code).removeprefix('error: ')}; "
                            "the split is closed")

    def close(self) -> None:
        """Stop the devices and wait until they are gone (idempotent)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._proc.stdin.write(np.array([STOP, 0, 0, 0, 0, 0], np.int64).tobytes())
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> EdgeService:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(args, comm: MpiComm) -> None:
    """One device: build the split once, then run requests until rank 0 reads a stop (or its input closes)."""
    cores = pin_cores(args.threads, args.pin_cores)
    split = open_split(args, read_manifest(args.directory), comm, args.threads or len(cores))
    release_freed_memory()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    header = np.zeros(_HEADER, np.int64)
    while True:
        if comm.rank == 0:
            data = stdin.read(8 * _HEADER)
            header[:] = np.frombuffer(data, np.int64) if len(data) == 8 * _HEADER else STOP
        request = comm.world.Ibcast(header, root=0)
        while not request.Test():  # idle between requests: no deadline, and no core spinning
            time.sleep(0.0005)
        op, shape, dtype = int(header[0]), tuple(int(v) for v in header[1:5]), DTYPES[int(header[5])]
        if op == STOP:
            return
        if op == STATS:
            info = comm.gather_object({"rank": comm.rank, "host": comm.hosts[comm.rank], "pid": os.getpid(),
                                       "param_bytes": split.param_bytes, "peak_rss_bytes": peak_rss_bytes()})
            if comm.rank == 0:
                text = json.dumps(info).encode()
                _answer(stdout, 0, len(text), 0, text)
            continue
        images = (np.frombuffer(stdin.read(int(np.prod(shape)) * dtype.itemsize), dtype).reshape(shape)
                  if comm.rank == 0 else np.empty(shape, dtype))
        parts = np.array_split(images, min(args.overlap, shape[0]))  # the same slices on every rank
        logits = split.step([np.ascontiguousarray(p) for p in parts])
        if comm.rank == 0:
            out = np.concatenate(logits).astype(np.float32)
            _answer(stdout, 0, *out.shape, out.tobytes())


def _answer(stdout, status: int, rows: int, cols: int, payload: bytes) -> None:
    stdout.write(_MAGIC + np.array([status, rows, cols], np.int64).tobytes() + payload)
    stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m decnn.edge.service", description=__doc__.split("\n\n")[0])
    p.add_argument("directory")
    p.add_argument("--exchange-dtype", choices=EXCHANGE_DTYPES, default="fp32")
    p.add_argument("--overlap", type=int, default=1)
    p.add_argument("--check-exchange", action="store_true")
    p.add_argument("--mode", choices=SPATIAL_MODES)
    p.add_argument("--speeds", type=speeds_arg)
    p.add_argument("--threads", type=int)
    p.add_argument("--no-pin-cores", dest="pin_cores", action="store_false")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--transport", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        read_manifest(args.directory)
    except BundleError as e:
        return exit_now(f"error: {e}", USAGE)
    return as_device(args.timeout, lambda comm: serve(args, comm))


if __name__ == "__main__":
    sys.exit(main())
