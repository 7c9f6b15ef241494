"""The persistent workers behind :func:`decnn.split`: each builds its mode once, then runs request after request.

Rank 0 takes requests from the caller's process through a pipe and announces each one to every rank in a
small broadcast (operation, batch shape, dtype); then every rank runs its mode's ``step``, as the benchmark
runner does, and rank 0 sends the logits back. Several hosts: on each other host run

    torchrun --nnodes N --nproc-per-node K --rdzv-backend c10d --rdzv-endpoint HOST0:PORT --rdzv-id decnn \
        -m decnn.serve.worker

while the caller on HOST0 calls ``decnn.split(..., nnodes=N, rdzv_endpoint="HOST0:PORT")``; rank 0 sends
the workers the settings and the model spec (shards and checkpoints are read on each host).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

import torch

from decnn.common.timing import peak_rss_bytes
from decnn.distributed.communicator import Communicator, host_label
from decnn.distributed.pinning import configure_threads
from decnn.inference.build import build_mode
from decnn.inference.inputs import Normalize
from decnn.inference.optimize import keep_freed_memory
from decnn.inference.settings import InferConfig
from decnn.inference.spec import ModelSpec

STOP, RUN, STATS, IDLE = 0, 1, 2, 3  # IDLE: no request yet (an elastic group's keep-alive, decnn.serve.device)
DTYPES = (torch.uint8, torch.float32)  # the inputs a request may carry, by their code in the header


class Worker:
    """This rank's mode, built once, and the loop that serves the caller's requests."""

    def __init__(self, cfg: InferConfig, comm: Communicator, spec: ModelSpec):
        self.comm = comm
        normalize = Normalize(spec.mean, spec.std, comm.device)
        built = build_mode(cfg, comm, spec, normalize, spec.input_size)
        self.mode = built.mode
        self.in_flight = cfg.overlap if cfg.mode == "branch" else 1
        self.param_bytes, self.placement = built.param_bytes, built.placement

    def info(self) -> dict:
        return {"rank": self.comm.rank, "host": socket.gethostname(), "pid": os.getpid(), "device": host_label(),
                "param_bytes": self.param_bytes, "peak_rss_bytes": peak_rss_bytes(), "placement": self.placement}

    def serve(self, conn) -> None:
        """Run requests until the caller says stop (rank 0 reads them from ``conn``)."""
        comm, header = self.comm, torch.zeros(6, dtype=torch.long)
        while True:
            images = None
            if comm.rank == 0:
                op, array = conn.recv()
                images = None if array is None else torch.from_numpy(array)
                shape, dtype = (images.shape, DTYPES.index(images.dtype)) if op == RUN else ((0,) * 4, 0)
                header = torch.tensor([op, *shape, dtype])
            comm.broadcast(header)
            op, shape, dtype = int(header[0]), tuple(header[1:5].tolist()), DTYPES[int(header[5])]
            if op == STOP:
                return
            if op == IDLE:  # the other ranks' broadcast completed: none of them times out while no one calls
                continue
            if op == STATS:
                info = comm.gather_object(self.info())
                if comm.rank == 0:
                    conn.send(("ok", info))
                continue
            if images is None:
                images = torch.empty(shape, dtype=dtype, device=comm.device)
            # Up to ``in_flight`` slices of the batch in flight (the mode's overlap), the same on every rank.
            out = self.mode.step(list(images.to(comm.device).tensor_split(min(self.in_flight, shape[0]))))
            if comm.rank == 0:
                conn.send(("ok", torch.cat(out).cpu().numpy()))


def serve(cfg: InferConfig | None, spec: ModelSpec | None, conn, timeout_s: float = 60.0, device: str = "cpu") -> None:
    """One worker process: join the group, build the mode, serve; rank 0 talks to the caller through ``conn``.

    Processes on other hosts pass ``cfg``, ``spec`` and ``conn`` as None and get the settings from rank 0.
    """
    keep_freed_memory()
    comm = Communicator(cfg.timeout if cfg else timeout_s, torch.device(cfg.device if cfg else device))
    try:
        if comm.rank != 0 and conn is not None:
            conn.close()  # only rank 0 answers the caller; a closed pipe then means rank 0 is gone
            conn = None
        if comm.rank == 0 and conn is None:
            raise RuntimeError("rank 0 must run on the caller's host: start the caller before torchrun elsewhere")
        cfg, spec = comm.broadcast_object((cfg, spec))
        configure_threads(int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
                          cfg.threads, cfg.pin_cores)
        try:
            worker = Worker(cfg, comm, spec)
        except Exception as e:  # a bad shard or placement: tell the caller in words, then fail as usual
            if conn is not None:
                conn.send(("error", f"rank {comm.rank}: {e}"))
            raise
        info = comm.gather_object(worker.info())
        if conn is not None:
            conn.send(("ready", info))
        worker.serve(conn)
    finally:
        comm.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m decnn.serve.worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a dead or hung peer stops the run")
    args = p.parse_args(argv)
    if "RANK" not in os.environ:
        p.error("run me under torchrun with the caller's rendezvous (see the module's docstring)")
    serve(None, None, None, args.timeout, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
