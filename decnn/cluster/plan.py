"""``decnn plan --hosts``: place the groups from the boards' own measurements, and export that placement.

    decnn plan --hosts pi@board0,pi@board1 runs/train/<run>/best.pt --out shards/
    decnn plan --hosts pi@board0,pi@board1,pi@board2 best.pt --out shards/ --batch 8 --threads 2
    decnn deploy shards/ --plan

Each board gets the device environment (as `decnn deploy` installs it) and, for every number of groups k it might
hold, the graphs of a branch of k groups (the model's structure, random weights); it times them with ONNX Runtime,
the runtime it will run, each in a process of its own, and reports its peak RSS. One MPI job measures every link
(ping-pongs). The cost model predicts every placement of consecutive groups over the boards in their order, and the
fastest that fits every board's free memory is exported from the checkpoint into --out, with plan.json beside it:
`decnn deploy OUT --plan` runs it and prints the prediction beside the measured run. The timed graphs
are removed from the boards afterwards. Exit codes: 0, 2 (bad input), 1 (a board failed: one line naming it).
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import sys
import tempfile
from pathlib import Path

from decnn.cluster.deploy import IDLE_DEVICE_BYTES
from decnn.cluster.environment import LaptopError, Wheels
from decnn.cluster.hosts import Host, HostError, Ssh, parse_hosts
from decnn.cluster.mpmd import Rank
from decnn.cluster.placement import (
    PLAN,
    BoardProfile,
    BoardsPlan,
    Candidate,
    Links,
    PlanError,
    milliseconds,
    rank,
)
from decnn.cluster.session import Board, Session, failed, on_every_board
from decnn.common.exitcodes import RUNTIME, USAGE
from decnn.common.job_parser import job_parser
from decnn.wire.export_format import MANIFEST

PROFILE = "profile"  # ~/.decnn/profile/ on a board: the graphs it times, while it times them


def parser() -> argparse.ArgumentParser:
    p = job_parser("plan", __doc__, prog="decnn plan --hosts")
    p.add_argument("checkpoint", help="a training checkpoint (best.pt), exported for the chosen placement")
    p.add_argument("--hosts", required=True, help="comma-separated [user@]address of each board, in device order")
    p.add_argument("--out", required=True, help="folder for the export and its plan.json")
    p.add_argument("--batch", type=int, default=1, help="images per batch the run will take (default 1)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads per board (default: each board's cores)")
    p.add_argument("--ssh-config", help="an ssh_config file for ssh and scp (ssh -F; default: ~/.ssh/config)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        hosts = parse_hosts(args.hosts)
        if not Path(args.checkpoint).is_file():
            raise ValueError(f"no checkpoint at {args.checkpoint}")
        if args.batch < 1 or (args.threads is not None and args.threads < 1):
            raise ValueError("--batch and --threads must be at least 1")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE
    try:
        return plan_boards(args, hosts)
    except (LaptopError, PlanError) as e:
        print(f"error: {e}", file=sys.stderr)
        return RUNTIME


def plan_boards(args: argparse.Namespace, hosts: list[Host]) -> int:
    from decnn.cluster.profile_set import export_profile_set  # torch: the laptop's part

    with tempfile.TemporaryDirectory(prefix="decnn-plan-") as tmp:
        tmp = Path(tmp)
        print("exporting the graphs the boards will time (k groups each, random weights) ...", flush=True)
        groups, traffic = export_profile_set(args.checkpoint, tmp / PROFILE)
        if len(hosts) > groups:
            raise PlanError(f"the model has {groups} groups: at most {groups} boards, not {len(hosts)}")
        session = Session(hosts, Ssh(args.ssh_config), Wheels())
        folders = {f"{PROFILE}/k{k}": sorted(p for p in (tmp / PROFILE / f"k{k}").iterdir())
                   for k in range(1, groups + 1)}
        boards, errors = on_every_board(lambda h: session.prepare(h, folders, IDLE_DEVICE_BYTES), hosts)
        if errors:
            return failed(errors)
        _, errors = on_every_board(session.set_up, boards)
        if errors:
            return failed(errors)
        print("timing each board's branches of 1.." + f"{groups} groups ...", flush=True)
        measured, errors = on_every_board(lambda b: _measure(session, b, args), boards)
        if errors:
            return failed(errors)
        print("measuring the links ...", flush=True)
        links = _links(session, boards, tmp)
        if links is None:
            return RUNTIME
        for b in boards:
            session.ssh.run(b.host, f"rm -rf {shlex.quote(f'{b.facts.root}/{PROFILE}')}", "removing the timed graphs")
    profiles = [BoardProfile(b.host.spec, m["step_s"], m["peak_rss"], b.facts.memory_available, b.facts.cpus)
                for b, m in zip(boards, measured)]
    ranked = rank(profiles, links, traffic, groups, args.batch)
    print(_table(ranked, profiles))
    best = ranked[0]
    if not best.fits:
        raise PlanError("no placement fits every board's free memory: free memory on the boards, or add a board")
    return _export(args, hosts, best, ranked, profiles, links)


def _measure(session: Session, board: Board, args: argparse.Namespace) -> dict:
    threads = ["--threads", str(args.threads)] if args.threads else []
    command = [board.python, "-m", "decnn.cluster.measure", f"{board.facts.root}/{PROFILE}", "--batch",
               str(args.batch), *threads]
    out = session.ssh.run(board.host, " ".join(map(shlex.quote, command)), "timing its branches").stdout
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise HostError(board.host, f"its timing printed no result ({out.strip()[-100:]!r})",
                        "run `decnn plan --hosts` again") from None


def _links(session: Session, boards: list[Board], tmp: Path) -> Links | None:
    """Every link, from one MPI job across the boards; None if it failed (reported in one line)."""
    if len(boards) == 1:
        return Links([[0.0]], [[float("inf")]], [0.0])
    out = io.StringIO()
    ranks = [Rank(b.host, b.python, ["-m", "decnn.cluster.links"]) for b in boards]
    if session.mpiexec(ranks, tmp, boards[0].facts.laptop_address, stdout=out):
        return None
    data = json.loads(out.getvalue().strip().splitlines()[-1])
    return Links(data["latency_s"], data["bytes_per_s"], data["burst"])


def _export(args, hosts: list[Host], best: Candidate, ranked: list[Candidate], profiles: list[BoardProfile],
            links: Links) -> int:
    """The checkpoint exported for ``best``, and plan.json beside it."""
    from decnn.deploy.export import main as export_main  # torch: the laptop's part

    spec = best.spec
    code = export_main([args.checkpoint, "--placement", spec, "--out", args.out, "--onnx"])
    if code:
        return code
    manifest = json.loads((Path(args.out) / MANIFEST).read_text())
    plan = BoardsPlan(export_id=manifest["export_id"], hosts=[h.spec for h in hosts], placement=best.placement,
                      batch=args.batch, threads=args.threads,
                      predicted=milliseconds(best.prediction), memory=best.memory,
                      candidates=[{"placement": c.spec, **milliseconds(c.prediction), "fits": c.fits} for c in ranked],
                      boards=[vars(p) for p in profiles], links=vars(links))
    plan.save(Path(args.out) / PLAN)
    print(f"placement {spec}: predicted {plan.predicted['step_ms']:.1f} ms per batch of {args.batch}; wrote "
          f"{Path(args.out) / PLAN}\nnext: decnn deploy {args.out} --plan")
    return 0


def _table(ranked: list[Candidate], profiles: list[BoardProfile]) -> str:
    lines = [f"{'placement':<16} {'predicted ms':>12} {'compute ms':>10} {'transfer ms':>11}   memory needed / free "
             "per board (MiB)"]
    for c in ranked:
        memory = ", ".join(f"{m / 2**20:.0f}/{p.memory_available / 2**20:.0f}" for m, p in zip(c.memory, profiles))
        lines.append(f"{c.spec:<16} {c.prediction.step_s * 1e3:>12.2f} {c.prediction.compute_s * 1e3:>10.2f} "
                     f"{c.prediction.transfer_s * 1e3:>11.2f}   {memory}{'' if c.fits else '  (does not fit)'}")
    return "\n".join(lines)
