"""Measure a profile over the process group, plan a split from one, or emulate uneven devices (``decnn plan``).

    decnn plan profile --devices 2 --batch 1 --out results/profile.json
    torchrun --nnodes 2 ... -m decnn.plan profile --batch 1 --out profile.json     # one process per host
    decnn plan plan results/profile.json --objective throughput
    sudo .venv/bin/decnn plan hetero --slow-host 1 --cpu 0.4
    decnn plan --hosts pi@board0,pi@board1 best.pt --out shards/    # boards over ssh (decnn plan --hosts --help)
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from decnn.common.errors import ConfigError
from decnn.common.job_parser import job_parser
from decnn.distributed.communicator import PeerError
from decnn.distributed.launcher import LaunchError, launch
from decnn.distributed.process import under_launcher
from decnn.emulation.netns import LinkError
from decnn.inference.settings import InferConfig
from decnn.plan.hetero import format_side_by_side, side_by_side
from decnn.plan.planner import OBJECTIVES, format_plans, plan
from decnn.plan.profile import Profile, ProfileArgs, profile_rank


def parse_args(argv):
    p = job_parser("plan", __doc__)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("profile", help="measure every device's segment times and every link over the group")
    m.add_argument("--devices", type=int, help="local processes to start (leave out under torchrun)")
    m.add_argument("--model", help="timm name (default decnn_resnet34)")
    m.add_argument("--groups", type=int, help="branches (default 4)")
    m.add_argument("--width", type=float, help="channel multiplier (default 1.5)")
    m.add_argument("--stem", choices=("tiny", "imagenet"))
    m.add_argument("--batch", type=int, default=1, help="images per batch (default 1)")
    m.add_argument("--image-size", type=int, help="input size (default: the model's)")
    m.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    m.add_argument("--pin-cores", action="store_true")
    m.add_argument("--timeout", type=float, default=60.0)
    m.add_argument("--spatial", action="store_true", help="also time each device's tiles of the peers' spatial "
                   "splits (modnn, grid), for the cost model's prediction of them")
    m.add_argument("--out", default="results/profile.json", help="JSON file (default %(default)s)")
    q = sub.add_parser("plan", help="rank every way to run from a profile")
    q.add_argument("profile", help="a profile JSON written by `profile`")
    q.add_argument("--objective", choices=OBJECTIVES, default="latency")
    q.add_argument("--top", type=int, default=10, help="plans to print (default 10)")
    h = sub.add_parser("hetero", help="emulated uneven devices: the even placement, the plan and one device, "
                       "side by side (root)")
    h.add_argument("--devices", type=int, default=2)
    h.add_argument("--batch", type=int, default=1)
    h.add_argument("--slow-host", type=int, default=1, help="the host that is slowed (default 1)")
    h.add_argument("--cpu", type=float, default=0.4, help="its share of one core (default 0.4; 1 = not slowed)")
    h.add_argument("--link", help="every host's link rate, e.g. 1gbit (default: unshaped veth)")
    h.add_argument("--slow-link", help="the slow host's link rate both ways, e.g. 20mbit")
    h.add_argument("--rounds", type=int, default=3)
    h.add_argument("--images", type=int, default=16, help="timed batches per run (default 16)")
    h.add_argument("--objective", choices=OBJECTIVES, default="latency")
    h.add_argument("--out", default="results/hetero.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a == "--hosts" or a.startswith("--hosts=") for a in argv):
        from decnn.cluster.plan import main as plan_boards  # boards reached over ssh, profiled with ONNX Runtime

        return plan_boards(argv)
    args = parse_args(argv)
    try:
        if args.command == "plan":
            ranked = plan(Profile.load(args.profile), args.objective)
            print(format_plans(ranked[: args.top], args.objective))
            return 0
        if args.command == "hetero":
            result = side_by_side(args.devices, args.batch, args.slow_host, args.cpu, args.link, args.slow_link,
                                  args.rounds, args.images, args.objective)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
            print(format_side_by_side(result))
            print(f"wrote {args.out}")
            return 0
        cfg = InferConfig(random_init=True, model=args.model, groups=args.groups, width=args.width, stem=args.stem,
                          batch=args.batch, image_size=args.image_size, threads=args.threads,
                          pin_cores=args.pin_cores, timeout=args.timeout, devices=args.devices).check()
        job = ProfileArgs(dataclasses.replace(cfg, devices=None), args.out, args.spatial)
        if under_launcher() or not args.devices or args.devices == 1:
            profile_rank(job)
        else:
            launch(profile_rank, (job,), args.devices)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (PeerError, LaunchError, LinkError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
