"""``decnn deploy``: an export onto boards over ssh, run there, its first answer checked against the whole model here.

    decnn deploy shards/ --hosts pi@board0,pi@board1            # check, install, copy, run; verified the first time
    decnn deploy shards/ --hosts pi@board0,pi@board1 --check    # what it would do; changes nothing on the boards
    decnn deploy shards/ --plan                                 # as `decnn plan --hosts` placed it: its hosts
    decnn deploy shards/ --hosts pi@board0,pi@board1 --images 64 --batch 8 --exchange-dtype int8
    decnn deploy modnn/ --hosts pi@a,pi@b,pi@c                  # a spatial export: every graph on every board

Host d runs device d. Through the system's ssh and scp (keys only: `ssh-copy-id` first), each board is checked
(Python 3.10+, a 64-bit CPU, free memory and disk), gets decnn[edge] in a venv at ~/.decnn/env (from the package
index where it reaches it, otherwise from wheels fetched here for its platform), and only its device's files in
~/.decnn/exports/<export id>/ (the manifest, its plans, its graphs); what a board already holds, by content hash,
is not copied again. Then this machine's mpiexec runs the device runtime across the boards over TCP, and the run's
report is printed here. A deploy that copied or installed anything, or ran on these hosts for the first time,
checks the run's answers against the export's model.onnx here (--verify always, --no-verify never): beyond the
exchange's bound it exits 1 (decnn.common.verification). The options under "each device's run" go to every device's
run as they are (--images, --batch, --exchange-dtype, --threads, --timeout, ...).
Exit codes: 0, 2 (bad input), 1 (a board or the run failed: one line per board, naming it and what to do; the
same command again after the fix completes the deploy), 130 (Ctrl-C).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from decnn.cluster.environment import LaptopError, Wheels
from decnn.cluster.facts import MiB
from decnn.cluster.files import device_files, export_folder
from decnn.cluster.hosts import Host, Ssh, parse_hosts
from decnn.cluster.mpmd import Rank
from decnn.cluster.placement import MEMORY_MARGIN_BYTES, PLAN, BoardsPlan, PlanError
from decnn.cluster.session import Board, Session, failed, on_every_board
from decnn.common.exitcodes import RUNTIME, USAGE
from decnn.common.job_parser import job_parser
from decnn.common.record import RunRecord, format_table
from decnn.common.verification import VerificationError, check, compare
from decnn.edge.branches import edge_whole
from decnn.edge.bundle import whole_model
from decnn.edge.device_run import add_run_arguments
from decnn.edge.device_run import parser as run_parser
from decnn.edge.spatial import tiling_of
from decnn.wire.export_format import BundleError, read_manifest, split_mode

RUNS = "runs"  # ~/.decnn/runs/<run>/ on board 0: a run's record and logits until the laptop fetches them
INPUTS = "inputs.npz"  # the images of a deployed run, in board 0's export folder
_OWN_RUN_OPTIONS = ("--inputs", "--verify", "--out", "--logits")  # a deploy's own, not passed to the devices
IDLE_DEVICE_BYTES = 64 * MiB  # a device process with its libraries and MPI up and no graph (decnn bench edge-memory)


def parser() -> argparse.ArgumentParser:
    """Every option of ``decnn deploy``: its own and those it passes to each device's run."""
    p = _deploy_parser()
    add_run_arguments(p.add_argument_group("each device's run"), leave_out=_OWN_RUN_OPTIONS)
    return p


def _deploy_parser() -> argparse.ArgumentParser:
    p = job_parser("deploy", __doc__)
    p.add_argument("directory", help="a folder written by `decnn export CHECKPOINT --onnx` (or by "
                   "`decnn plan --hosts`)")
    p.add_argument("--hosts", help="comma-separated [user@]address of each board, in device order")
    p.add_argument("--plan", action="store_true", help="run as DIRECTORY/plan.json says (written by `decnn plan "
                   "--hosts`): on its hosts, with its batch and threads; the cost model's prediction beside the run")
    p.add_argument("--check", action="store_true", help="check the boards and say what the deploy would copy, "
                   "install and run; change nothing there")
    verify = p.add_mutually_exclusive_group()
    verify.add_argument("--verify", action="store_true", default=None,
                        help="check the run against model.onnx here (default: when the deploy changed anything)")
    verify.add_argument("--no-verify", dest="verify", action="store_false")
    p.add_argument("--inputs", help="the run's images: an .npz with `images` (uint8 N,3,H,W) (default: seeded "
                   "random ones, --images of them)")
    p.add_argument("--out", help="write the run's record as JSON here")
    p.add_argument("--logits", help="write the run's logits as .npy here")
    p.add_argument("--single", action="store_true", help=argparse.SUPPRESS)  # refused with what to run instead
    p.add_argument("--ssh-config", help="an ssh_config file for ssh and scp (ssh -F; default: ~/.ssh/config)")
    return p


@dataclasses.dataclass
class Job:
    """A deploy, checked: the export, the hosts, the devices' run arguments."""

    directory: Path
    manifest: dict
    hosts: list[Host]
    run_args: list[str]
    run: argparse.Namespace  # the run arguments, parsed as a device parses them
    plan: BoardsPlan | None
    memory: list[int]


def job(args: argparse.Namespace, run_args: list[str]) -> Job:
    """The deploy that ``args`` ask for; ValueError (a usage error) for what cannot be deployed."""
    directory, plan = Path(args.directory), None
    if args.plan:
        if args.hosts:
            raise ValueError(f"--plan runs on the hosts {directory / PLAN} names: drop --hosts")
        plan = BoardsPlan.load(directory / PLAN)
        hosts = [Host(s, r) for r, s in enumerate(plan.hosts)]
        threads = ["--threads", str(plan.threads)] if plan.threads else []  # None: each board's cores
        run_args = ["--batch", str(plan.batch), *threads, *run_args]
    elif not args.hosts:
        raise ValueError(f"name the boards: decnn deploy {directory} --hosts pi@board0,pi@board1 (or --plan, after "
                         "decnn plan --hosts)")
    else:
        hosts = parse_hosts(args.hosts)
    manifest = read_manifest(directory)
    if plan and plan.export_id != manifest["export_id"]:
        raise ValueError(f"{directory / PLAN} was written for another export than {directory}'s: run decnn plan "
                         "--hosts again")
    if split_mode(manifest) == "branch":
        if not manifest.get("onnx"):
            raise ValueError(f"{directory} has no ONNX graphs: export with `decnn export CHECKPOINT --onnx ...`")
        if len(hosts) != len(manifest["devices"]):
            raise ValueError(f"{directory} is exported for {len(manifest['devices'])} devices, and --hosts names "
                             f"{len(hosts)}: name one board per device, or export again with --devices {len(hosts)}")
    else:
        tiling_of(manifest, len(hosts))
    run = _run_parser().parse_args([str(directory), *run_args])
    if args.single:
        raise ValueError(f"--single runs the whole model on one device: decnn edge {directory} --single")
    if args.inputs:
        _read_images(Path(args.inputs))
    memory = (plan.memory if plan else
              [IDLE_DEVICE_BYTES + 2 * d["param_bytes"] + MEMORY_MARGIN_BYTES for d in manifest["devices"]])
    return Job(directory, manifest, hosts, run_args, run, plan, memory)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # every option checked, the devices' too, before any board is touched
    run_args = _deploy_parser().parse_known_args(argv)[1]
    try:
        todo = job(args, run_args)
    except (ValueError, BundleError, PlanError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE
    try:
        return deploy(todo, args)
    except (LaptopError, VerificationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return RUNTIME


def deploy(todo: Job, args: argparse.Namespace) -> int:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="decnn-deploy-") as tmp:
        tmp = Path(tmp)
        inputs = _inputs(todo, args, tmp / INPUTS)
        wheels = Wheels()
        session = Session(todo.hosts, Ssh(args.ssh_config), wheels)
        folder = export_folder(todo.manifest)
        marker = _verified_marker(todo.hosts)

        def prepare(host: Host) -> Board:
            files = [todo.directory / n for n in device_files(todo.directory, todo.manifest, host.rank)]
            return session.prepare(host, {folder: files + ([inputs] if host.rank == 0 else []), RUNS: []},
                                   todo.memory[host.rank])

        boards, errors = on_every_board(prepare, todo.hosts)
        if errors:
            return failed(errors)
        print("\n".join(_board_lines(boards, todo.manifest, folder, args.check)), flush=True)
        verify = args.verify if args.verify is not None else (
            any(b.changes for b in boards) or marker not in boards[0].facts.hashes[folder])
        if args.check:
            print("run: this machine's mpiexec over ssh, device d on host d; "
                  + ("the answers checked against model.onnx here" if verify else "no verification (done before)"))
            return 0
        warnings, errors = on_every_board(session.set_up, boards)
        if errors:
            return failed(errors)
        for board, warned in zip(boards, warnings):
            if warned:
                print(f"{board.host}: pip warned: {warned}")
        ready = time.monotonic()
        code, out = _run(session, boards, folder, todo.run_args, tmp)
        if code:
            return code
        record = RunRecord.from_dict(json.loads((out / "record.json").read_text()))
        logits = np.load(out / "logits.npy")
        if verify:
            record = dataclasses.replace(record, **_verification(todo, logits, inputs))
        if todo.plan:
            p = todo.plan.predicted
            record = dataclasses.replace(record, predicted_latency_ms=p["step_ms"],
                                         predicted_compute_ms=p["compute_ms"], predicted_transfer_ms=p["transfer_ms"],
                                         measured_for_prediction_ms=record.latency_ms.p50)
        _write(record, logits, args)
        print(format_table(record))
        print(_summary(boards, folder, record, todo, ready - start, time.monotonic() - start, wheels.fetch_s))
        if verify:
            check(record.to_dict())
            first = boards[0]
            session.ssh.run(first.host, "touch " + shlex.quote(f"{first.facts.root}/{folder}/{marker}"),
                            "noting the verification")
    return 0


def _run(session: Session, boards: list[Board], folder: str, run_args: list[str], tmp: Path) -> tuple[int, Path]:
    """The export on ``boards`` (rank r on board r); mpiexec's exit code and the local folder that holds rank 0's
    ``record.json`` and ``logits.npy`` (when it ended with 0)."""
    first, ssh = boards[0], session.ssh
    run = f"{first.facts.root}/{RUNS}/{int(time.time() * 1e3)}"
    ranks = []
    for b in boards:
        args = ["-m", "decnn.edge.device_run", f"{b.facts.root}/{folder}", "--transport", "mpi-tcp", *run_args]
        if b is first:
            args += ["--inputs", f"{b.facts.root}/{folder}/{INPUTS}", "--out", f"{run}/record.json",
                     "--logits", f"{run}/logits.npy"]
        ranks.append(Rank(b.host, b.python, args))
    ssh.run(first.host, f"mkdir -p {shlex.quote(run)}", "making the run's folder")
    # The devices' table stays off the console: it is printed here once the answers are verified.
    code = session.mpiexec(ranks, tmp, first.facts.laptop_address, stdout=io.StringIO())
    out = tmp / "run"
    out.mkdir(exist_ok=True)
    if code == 0:
        ssh.fetch(first.host, [f"{run}/record.json", f"{run}/logits.npy"], out, "fetching the run's record")
    ssh.run(first.host, f"rm -rf {shlex.quote(run)}", "removing the run's folder")
    return code, out


def _verified_marker(hosts: list[Host]) -> str:
    """The file in board 0's export folder that says the export was verified on these hosts, in this order."""
    return "verified-" + hashlib.sha256(",".join(h.spec for h in hosts).encode()).hexdigest()[:16]


def _inputs(todo: Job, args: argparse.Namespace, path: Path) -> Path:
    """The run's images at ``path``: a copy of --inputs, or seeded random ones."""
    if args.inputs:
        shutil.copyfile(args.inputs, path)
    else:
        size = todo.run.image_size or todo.manifest["image_size"]
        _write_images(path, np.random.default_rng(todo.run.seed).integers(0, 256, (todo.run.images, 3, size, size),
                                                                            np.uint8))
    return path


def _board_lines(boards: list[Board], manifest: dict, folder: str, check: bool) -> list[str]:
    """Per board: what it is, and what it receives (or would: ``check``)."""
    verb = "would copy" if check else "copying"
    env = {"ready": "decnn[edge] already installed", "decnn": "decnn's own wheel changed: reinstall it"}
    lines = []
    for b in boards:
        held = manifest.get("placement", [None] * len(boards))[b.host.rank]
        part = f"device {b.host.rank}" + (f" (groups {','.join(map(str, held))})" if held else "")
        files, weights = b.folders[folder], manifest["devices"][b.host.rank]["param_bytes"]
        source = ("the package index" if b.facts.index else
                  f"{len(b.wheels.files)} wheels fetched here ({b.wheels.bytes / MiB:.1f} MiB)")
        lines += [f"{b.host}: {b.facts.describe()}",
                  f"  environment: {env.get(b.environment, f'install decnn[edge] in {b.python[:-11]} from {source}')}"
                  + (f"; {verb} {len(b.wheels.missing)} wheel(s)" if b.environment != "ready" else ""),
                  f"  files: {part}: {len(files.files)} files, {files.bytes / MiB:.2f} MiB (weights "
                  f"{weights / MiB:.2f} MiB); {verb} {len(files.missing)} ({files.missing_bytes / MiB:.2f} MiB), "
                  f"{len(files.files) - len(files.missing)} already there"]
    return lines


def _verification(todo: Job, logits: np.ndarray, inputs: Path) -> dict:
    """The run's logits against the whole model's (model.onnx, here) on the same images."""
    images = _read_images(inputs)[: len(logits)]
    manifest = todo.manifest
    whole = edge_whole(whole_model(todo.directory, len(os.sched_getaffinity(0))), manifest["mean"], manifest["std"])
    reference = np.concatenate(whole.step([images]))
    return compare(logits, reference, todo.run.exchange_dtype, "quantization" in manifest)


def _summary(boards: list[Board], folder: str, record: RunRecord, todo: Job, ready_s: float, total_s: float,
             fetch_s: float) -> str:
    lines = [f"deployed in {ready_s:.1f} s ({fetch_s:.1f} s of it fetching wheels here), with the run "
             f"{total_s:.1f} s; each board holds:"]
    for b in boards:
        files = b.folders[folder]
        lines.append(f"  {b.host}: {len(files.files)} files, {files.bytes:,} bytes ("
                     f"{', '.join(f.name for f in files.files)})")
    if todo.plan:
        predicted, measured = todo.plan.predicted["step_ms"], record.latency_ms.p50
        lines.append(f"cost model (decnn plan --hosts, from the boards' profile): predicted {predicted:.1f} ms, "
                     f"measured p50 {measured:.1f} ms ({(measured - predicted) / predicted:+.1%})")
    return "\n".join(lines)


def _write(record: RunRecord, logits: np.ndarray, args: argparse.Namespace) -> None:
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record.to_dict(), indent=2) + "\n")
    if args.logits:
        np.save(args.logits, logits)


def _write_images(path: Path, images: np.ndarray) -> None:
    """An .npz of ``images`` whose bytes depend on the images only (np.savez stamps the time), so that a
    board that holds them receives nothing."""
    with zipfile.ZipFile(path, "w") as z, z.open(zipfile.ZipInfo("images.npy", (1980, 1, 1, 0, 0, 0)), "w") as f:
        np.lib.format.write_array(f, images)


def _read_images(path: Path) -> np.ndarray:
    try:
        with np.load(path) as data:
            images = data["images"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"--inputs {path}: {e}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"--inputs {path} needs `images`, uint8 [N, 3, H, W], e.g. from `decnn data sample`")
    return images


def _run_parser() -> argparse.ArgumentParser:
    """The devices' parser (decnn.edge.device_run), raising ValueError instead of exiting."""
    p = run_parser()

    def error(message: str):
        raise ValueError(f"{message} (the devices' run: python -m decnn.edge.device_run --help)")

    p.error = error
    return p


if __name__ == "__main__":
    sys.exit(main())
