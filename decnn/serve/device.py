"""One device of an elastic split: torch's elastic agent as one node (``--nnodes MIN:MAX``) serving a caller.

    decnn device CALLER_HOST:PORT --nnodes 1:4
    decnn device 10.0.0.1:29500 --nnodes 2:4 --name board-3 --threads 4

The caller (``decnn.split(CHECKPOINT, elastic=True, ...)`` or ``decnn infer --elastic``) hosts the store
that the devices' c10d rendezvous and its requests live in. Whenever the membership changes — a device is
lost (killed, stopped, unreachable: its peers' collectives fail within ``--timeout``) or one joins — the
agents re-rendezvous, and each device's new worker takes the placement for the devices left (the most
balanced one: any count from 1 to the model's groups), builds its branch from the checkpoint (memory-mapped:
it reads only its own rows, so no device ever holds the whole model) and serves the requests still owed.
A device whose agent loses the rendezvous (its link went down) joins again until the caller closes.
Equivalent to ``torchrun --nnodes MIN:MAX --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint
CALLER_HOST:PORT --rdzv-id decnn-serve --rdzv-conf is_host=false,...`` around :func:`serve_group`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time

from decnn.common.errors import ConfigError
from decnn.common.job_parser import job_parser

RUN_ID = "decnn-serve"
# Seconds: a lost device is dropped from the rendezvous after keep_alive_interval x keep_alive_max_attempt
# without a heartbeat; a group short of --nnodes MAX forms last_call_timeout after the last device joined
# (torch's defaults, 15 s and 30 s, would add ~45 s to every membership change).
RENDEZVOUS = {"keep_alive_interval": 1, "keep_alive_max_attempt": 3, "last_call_timeout": 1, "read_timeout": 10}
MAX_RESTARTS = 1_000_000  # each membership change that a worker sees fail costs one restart of its agent
REJOIN_S = 2.0


def parse_nnodes(text: str) -> tuple[int, int]:
    """``"MIN:MAX"`` (or ``"N"``) as two counts, 1 <= MIN <= MAX; ConfigError otherwise."""
    try:
        low, _, high = text.partition(":")
        bounds = int(low), int(high or low)
    except ValueError:
        bounds = (0, 0)
    if not 1 <= bounds[0] <= bounds[1]:
        raise ConfigError(f"--nnodes {text!r}: give MIN:MAX devices with 1 <= MIN <= MAX, e.g. --nnodes 1:4")
    return bounds


def serve_group(endpoint: str, timeout_s: float) -> None:
    """The worker of one rendezvous round: join the group, build this rank's branch, serve until the caller
    closes or the group breaks (a PeerError, recorded in the caller's store for the timeline). Any other
    failure (a checkpoint this device cannot read, a bug) is recorded as the service's error: the caller
    raises it and closes, rather than the agents re-forming groups that fail alike."""
    import torch

    from decnn.distributed.communicator import Communicator, PeerError, host_label
    from decnn.distributed.launcher import exit_with_launcher
    from decnn.distributed.pinning import configure_threads
    from decnn.inference.optimize import keep_freed_memory
    from decnn.serve.requests import GroupChannel, connect
    from decnn.serve.worker import Worker

    exit_with_launcher()
    keep_freed_memory()
    store = connect(endpoint, timeout_s)
    if GroupChannel.closed(store):
        return
    cfg, spec = GroupChannel.settings(store)
    configure_threads(0, 1, cfg.threads, pin=False)
    comm = Communicator(cfg.timeout, torch.device(cfg.device))
    epoch = None
    try:
        epoch = comm.broadcast_object(GroupChannel.new_epoch(store) if comm.rank == 0 else None)
        worker = Worker(cfg, comm, spec)
        devices = comm.gather_object(worker.info())
        channel = None
        if comm.rank == 0:
            GroupChannel.announce(store, epoch, {"epoch": epoch, "devices": devices, "placement": worker.placement})
            channel = GroupChannel(store, epoch, idle_s=cfg.timeout / 3)
        worker.serve(channel)
    except PeerError as e:
        if epoch is not None:
            GroupChannel.record_fault(store, epoch, e)
        raise
    except torch.distributed.DistError:  # the caller's store out of reach (a link down): the agent retries
        raise
    except Exception as e:  # not a peer's loss: every new group would fail alike, so the caller raises it
        GroupChannel.record_error(store, f"rank {comm.rank} ({host_label()}): {type(e).__name__}: {e}")
        raise
    finally:
        comm.close()


def run_device(endpoint: str, nnodes: tuple[int, int], name: str, local_addr: str | None = None,
               timeout_s: float = 60.0) -> int:
    """Serve as one elastic node until the caller closes (returns 0); rejoin whenever the rendezvous is lost."""
    # c10d's C++ warnings would repeat each failed store connection (with a stack) while a link is down.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from decnn.distributed.process import start_worker_server, worker_environment
    from decnn.distributed.watchdog import terminable_when_stopped
    from decnn.serve.requests import GroupChannel, connect

    host, port = endpoint.rsplit(":", 1)
    local = host.startswith("127.") or host == "localhost"
    os.environ["DECNN_DEVICE_NAME"] = name
    # The workers' process group gets a store of its own each round, on that round's rank 0: the agents'
    # shared store would stay on the node that hosted it first, which may be the device that was lost.
    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    for logger in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(logger).setLevel(logging.CRITICAL)  # this module says what matters in one line
    config = LaunchConfig(
        min_nodes=nnodes[0], max_nodes=nnodes[1], nproc_per_node=1, run_id=RUN_ID, rdzv_backend="c10d",
        rdzv_endpoint=endpoint, rdzv_configs={"is_host": False, **RENDEZVOUS}, max_restarts=MAX_RESTARTS,
        monitor_interval=0.1, start_method="forkserver", local_addr=local_addr or route_address(host),
        shutdown_timeout=3,
    )
    start_worker_server("decnn.serve.worker", local)  # each round's worker forks ready: torch imported once
    while True:
        _wait_for(host, int(port), name)
        if GroupChannel.closed(connect(endpoint, timeout_s)):
            return 0
        try:
            with terminable_when_stopped(), worker_environment(local):
                elastic_launch(config, serve_group)(endpoint, timeout_s)
            GroupChannel.leave(connect(endpoint, timeout_s))  # the caller closed; it waits for its devices
            return 0
        except (ChildFailedError, RendezvousError, RuntimeError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        print(f"[device {name}] left the group ({reason}); joining again", file=sys.stderr, flush=True)
        time.sleep(REJOIN_S)


def _wait_for(host: str, port: int, name: str) -> None:
    """Return once the caller's store accepts connections (before it starts, or while a link is down)."""
    said = False
    while True:
        try:
            socket.create_connection((host, port), timeout=REJOIN_S).close()
            return
        except OSError:
            if not said:
                print(f"[device {name}] waiting for the caller at {host}:{port}", file=sys.stderr, flush=True)
                said = True
            time.sleep(REJOIN_S)


def route_address(host: str) -> str:
    """This machine's address on the route to ``host`` (what the other devices reach this one by)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, 1))  # no packet is sent: this only picks the route
        return s.getsockname()[0]


def main(argv: list[str] | None = None) -> int:
    p = job_parser("device", __doc__)
    p.add_argument("endpoint", metavar="HOST:PORT", help="the caller's store (decnn.split's rdzv_endpoint)")
    p.add_argument("--nnodes", default="1:4", help="MIN:MAX devices of the split (default %(default)s)")
    p.add_argument("--name", default=socket.gethostname(), help="this device in reports (default: the hostname)")
    p.add_argument("--local-addr", help="the address the other devices reach this one by (default: the one on "
                   "the route to the caller)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to reach the caller's store")
    args = p.parse_args(argv)
    try:
        nnodes = parse_nnodes(args.nnodes)
    except ConfigError as e:
        p.error(str(e))
    if ":" not in args.endpoint:
        p.error(f"endpoint {args.endpoint!r}: give HOST:PORT, e.g. 10.0.0.1:29500")
    from torch.distributed.elastic.multiprocessing.api import SignalException

    try:
        return run_device(args.endpoint, nnodes, args.name, args.local_addr, args.timeout)
    except SignalException as e:  # SIGTERM (or SIGINT) while the agent's handlers are installed: stop quietly
        print(f"[device {args.name}] stopped ({signal.Signals(e.sigval).name})", file=sys.stderr, flush=True)
        return 128 + e.sigval


if __name__ == "__main__":
    sys.exit(main())
