"""Split inference of a decoupled CNN: each device runs its branch and exchanges activations only at the shuffle points.

``decnn infer`` (also ``infer_distributed.py`` and ``python -m decnn.inference``): parse, check, then run
here, under torchrun, or launch N processes. The settings are checked before torch is imported, so a usage
error is reported at once. Exit codes: 2 for usage and input errors (settings, checkpoint, dataset), 1 for
runtime failures (a peer that died or hung, a --verify beyond its bound), 130 for Ctrl-C (see decnn.common.exitcodes).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from decnn.common.errors import ConfigError
from decnn.common.exitcodes import run_main
from decnn.distributed.process import LOCAL_ENDPOINT, is_local_launch, start_worker_server, under_launcher
from decnn.inference.settings import BACKENDS, DEFAULT_DATA_ROOT, EXCHANGE_DTYPES, MODES, InferConfig

EXAMPLES = """examples:
  # DeCNN ResNet-34 (G4, x1.5) split over 2 local processes, checked against the whole model
  {prog} --random-init --devices 2 --batch 1 --verify
  # a trained checkpoint on the val set, uneven placement, 3 batches in flight, fp16 exchange
  {prog} --checkpoint checkpoints/best.pt --devices 2 --placement 0,1,2/3 \\
      --overlap 3 --exchange-dtype fp16
  # the peers' spatial splits of plain ResNet-50 at 224: MoDNN's row bands, Coates et al.'s 2x2 tiles
  {prog} --random-init --mode modnn --devices 2 --model decnn_resnet50 --groups 1 --width 1.0 \\
      --stem imagenet --image-size 224 --verify
  {prog} --random-init --mode grid --devices 4 --groups 1 --width 1.0 --verify
  # the baselines: whole model in one process; plain ResNet-34; data parallel
  {prog} --random-init --mode single
  {prog} --random-init --mode single --groups 1 --width 1.0
  {prog} --random-init --mode data --devices 2 --batch 8
  # a split that survives a lost device: 3 devices here, and the timeline of its groups
  {prog} --random-init --elastic --devices 3 --duration 60 --timeout 4
  # several hosts: the same command on each, one process per device
  torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint HOST0:29500 \\
      infer_distributed.py --random-init
"""


def parser(prog: str = "decnn infer") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.splitlines()[0] + " (one all-to-all each).",
        epilog=EXAMPLES.format(prog=f"python {prog}" if prog.endswith(".py") else prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = InferConfig()
    g = p.add_argument_group("what to run")
    g.add_argument("--mode", choices=MODES, default=d.mode,
                   help="branch: DeCNN split (default); modnn: MoDNN's row bands of every feature map; grid: Coates "
                   "et al.'s 2-D tiles (4, 6, 8, ... devices); single: whole model, one process; data: whole model "
                   "on every device, different images; pipeline: layer-wise split (modnn, grid and pipeline work "
                   "for plain models too)")
    g.add_argument("--checkpoint", help="trained checkpoint; runs on the val images of --data-root")
    g.add_argument("--random-init", action="store_true", help="random weights on synthetic images (speed runs)")
    g.add_argument("--model", help="timm name (default decnn_resnet34; with --checkpoint: must match it)")
    g.add_argument("--groups", type=int, help="branches (with --random-init; default 4)")
    g.add_argument("--width", type=float, help="channel multiplier (with --random-init; default 1.5)")
    g.add_argument("--stem", choices=("tiny", "imagenet"), help="stem (with --random-init; default tiny)")
    g = p.add_argument_group("processes")
    g.add_argument("--devices", type=int, help="start this many local processes (one per device) through "
                   "torch's elastic launcher; leave out under torchrun")
    g.add_argument("--nnodes", type=int, default=d.nnodes, help="hosts, each running --devices processes")
    g.add_argument("--rdzv-endpoint", default=d.rdzv_endpoint,
                   help=f"HOST:PORT of the rendezvous (default {LOCAL_ENDPOINT}: this host, a free port)")
    g.add_argument("--device", choices=("cpu", "cuda"), default=d.device, help="gloo on cpu, NCCL on cuda")
    g.add_argument("--threads", type=int, help="torch threads per process (default: cores / local processes)")
    g.add_argument("--pin-cores", action=argparse.BooleanOptionalAction, default=d.pin_cores,
                   help="bind each process to cores of its own (default: on, where there are enough cores)")
    g.add_argument("--timeout", type=float, default=d.timeout,
                   help="seconds before a dead or hung peer stops the run (default %(default)s)")
    g = p.add_argument_group("inputs")
    g.add_argument("--data-root", help=f"Tiny-ImageNet layout folder (or the stand-in) whose val images a "
                   f"--checkpoint run reads (default {DEFAULT_DATA_ROOT})")
    g.add_argument("--num-images", type=int, help="images to run (default: the val split, or 64 synthetic)")
    g.add_argument("--batch", type=int, default=d.batch, help="images per batch (default %(default)s)")
    g.add_argument("--image-size", type=int, help="synthetic image size (default: the model's, 64)")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the random init and synthetic images")
    g = p.add_argument_group("split")
    g.add_argument("--placement", help="groups per device, e.g. 0,1,2/3 (default: even)")
    g.add_argument("--speeds", help="mode modnn: the devices' relative speeds, e.g. 1,0.4: each band's height "
                   "follows its device's speed (default: equal)")
    g.add_argument("--backend", choices=BACKENDS, default=d.backend,
                   help="what computes a branch: torch, or ONNX Runtime on the graphs of an --onnx export")
    g.add_argument("--exchange-dtype", choices=EXCHANGE_DTYPES, default=d.exchange_dtype,
                   help="activations on the wire: fp32, fp16, bf16 or int8 (8-bit, per-row scale)")
    g.add_argument("--check-exchange", action="store_true", help="send a CRC-32 of every block with each "
                   "all-to-all and end the run at the first block that arrives with other bytes")
    g.add_argument("--overlap", type=int, nargs="?", const=2, default=d.overlap, metavar="K",
                   help="keep K batches in flight so exchanges overlap compute (K=2 if no value); "
                   "mode pipeline: K micro-batches per batch")
    g.add_argument("--elastic", action="store_true", help="survive lost devices: each device is a node of torch's "
                   "elastic agent, the devices left re-place the groups and answer the calls in flight, a device "
                   "that returns grows the split back; prints the timeline (decnn.serve.elastic_model)")
    g.add_argument("--min-devices", type=int, default=d.min_devices, help="--elastic: fewest devices that serve")
    g.add_argument("--max-devices", type=int, help="--elastic: most devices (default: the model's groups)")
    g.add_argument("--duration", type=float, help="--elastic: keep calling, cycling the images, for this many "
                   "seconds (default: one pass)")
    g.add_argument("--deadline", type=float, default=d.deadline,
                   help="--elastic: seconds a call may wait for an answer before the run fails (default %(default)s)")
    g.add_argument("--plan", metavar="auto|PROFILE.json", help="profile these devices (auto) or read a profile, "
                   "then run the plan the cost model ranks best (decnn.plan)")
    g.add_argument("--objective", choices=("latency", "throughput"), default="latency", help="what --plan minimises")
    g = p.add_argument_group("measuring")
    g.add_argument("--warmup", type=int, default=d.warmup, help="untimed steps first (default %(default)s)")
    g.add_argument("--verify", action="store_true",
                   help="also run the whole model on rank 0 and report max |dlogit| and top-1 agreement; "
                   "beyond the exchange's bound the run fails (exit 1)")
    g.add_argument("--out", help="write the report as JSON here")
    g.add_argument("--trace", metavar="DIR", help="write a torch.profiler Chrome trace of the timed steps per "
                   "rank, DIR/rank<r>.json (open in chrome://tracing or ui.perfetto.dev)")
    g.add_argument("--log-dir", default=d.log_dir, help="TensorBoard runs go under this folder "
                   "(default %(default)s; '' for none)")
    return p


def main(argv: list[str] | None = None, prog: str = "decnn infer") -> int:
    """Run the command line; returns the exit code (0, 1 runtime failure, 2 usage or input error, 130 Ctrl-C)."""
    args = vars(parser(prog).parse_args(argv))
    planned, objective = args.pop("plan"), args.pop("objective")
    cfg = InferConfig(**args)
    try:
        cfg.check()  # before torch is imported: a usage error needs no heavy imports
        if planned and cfg.elastic:
            raise ConfigError("--plan and --elastic: an elastic split re-places the groups itself whenever the "
                              "devices change; drop one of them")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not planned and not cfg.elastic and not under_launcher() and cfg.world_size > 1:
        start_worker_server("decnn.inference.runner", is_local_launch(cfg.nnodes, cfg.rdzv_endpoint))
    from decnn.common.checksum import ExchangeCorrupted
    from decnn.common.verification import VerificationError
    from decnn.distributed.communicator import PeerError
    from decnn.distributed.launcher import LaunchError
    from decnn.serve.calls import WorkerError

    return run_main(lambda: _run(cfg, planned, objective), usage_errors=(ConfigError,),
                    runtime_errors=(PeerError, LaunchError, WorkerError, VerificationError, ExchangeCorrupted))


def _run(cfg: InferConfig, planned: str | None, objective: str) -> None:
    from decnn.distributed.launcher import launch
    from decnn.inference.runner import preflight, run_rank

    if cfg.elastic:
        from decnn.serve.timed_run import run_elastic

        run_elastic(cfg)
        return
    if planned:
        from decnn.plan.auto import run_planned

        _check(run_planned(cfg, planned, objective))
        return
    if under_launcher() or cfg.world_size == 1:
        _check(run_rank(cfg))  # a process of torchrun's, or a group of one
        return
    preflight(cfg)  # bad settings, checkpoint or dataset: fail before any process starts
    # The processes learn their number from the launcher, as under torchrun.
    worker_cfg = dataclasses.replace(cfg, devices=None)
    _check(launch(run_rank, (worker_cfg,), cfg.devices, nnodes=cfg.nnodes, rdzv_endpoint=cfg.rdzv_endpoint).get(0))


def _check(report) -> None:
    """With --verify, fail the run (exit 1, one line) if rank 0's report (None on other ranks) is not verified."""
    from decnn.common.verification import check

    if report is not None:
        check(report.to_dict())


if __name__ == "__main__":
    sys.exit(main())
