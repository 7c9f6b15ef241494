"""A laptop and two fresh boards over ssh, measured: one command from an export to a verified run, what each board
holds, and a placement from the boards' own profile against the even one. Needs root and openssh-server.

    sudo .venv/bin/decnn bench deploy --out results/deploy.json
    sudo .venv/bin/decnn bench deploy --cpu 1 0.4 --link 1gbit --rounds 5

Makes a random-init DeCNN ResNet-34 G4 x1.5 checkpoint (64x64) and its even export for 2 devices, and two fresh
emulated boards (decnn.emulation.ssh_boards: network namespaces with their own sshd and /root, board i held to
--cpu[i] of a core). The boards' wheels are fetched first (the downloads); then, timed from the laptop: `decnn
deploy EVEN --hosts ...` onto the fresh boards (install, copy, run, verify), `decnn plan --hosts CHECKPOINT` (the
boards' profile, the placement, its export) and `decnn deploy PLANNED --plan`; then interleaved rounds of both
placements on the same boards (nothing left to copy). Reports each board's files and bytes, the speed-up of the
plan over the even placement (the median of the rounds' p50 ratios) and the prediction against the measured p50.
Writes JSON and Markdown beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from decnn.bench.summary import write_result
from decnn.common.exitcodes import run_main
from decnn.common.job_parser import job_parser
from decnn.emulation.netns import LinkError

MODEL = {"model": "decnn_resnet34", "groups": 4, "width": 1.5, "stem": "tiny"}
IMAGE_SIZE = 64


class DeployFailed(RuntimeError):
    """A command of the measurement failed; the message is its error line."""


def prepare(tmp: Path) -> tuple[Path, Path]:
    """The random-init checkpoint and its even 2-device export."""
    from decnn.common.checkpoint import save_checkpoint
    from decnn.deploy.export import main as export_main
    from decnn.inference.settings import InferConfig
    from decnn.inference.spec import resolve_model

    spec = resolve_model(InferConfig(random_init=True, **MODEL))
    checkpoint = tmp / "decnn_resnet34.pt"
    save_checkpoint(checkpoint, {"model": spec.build().state_dict(), "model_name": spec.name,
                                 "model_kwargs": spec.kwargs, "config": {"data": {"image_size": IMAGE_SIZE}}})
    if export_main([str(checkpoint), "--devices", "2", "--out", str(tmp / "even"), "--onnx"]):
        raise DeployFailed("decnn export of the even placement failed")
    return checkpoint, tmp / "even"


def fetch_wheels() -> float:
    """Fetch the boards' wheels here (their Python is this machine's /usr/bin/python3); seconds it took."""
    from decnn.cluster.environment import Platform, Wheels
    from decnn.cluster.facts import ARCHITECTURES

    said = subprocess.run(["/usr/bin/python3", "-c", "import platform, sys; print(platform.machine(), "
                           "*sys.version_info[:2], *platform.libc_ver()[1].split('.'))"],
                          capture_output=True, text=True, check=True).stdout.split()
    start = time.monotonic()
    Wheels().dependencies(Platform(ARCHITECTURES[said[0]], (int(said[1]), int(said[2])), (int(said[3]), int(said[4]))))
    return time.monotonic() - start


def measure(cpu: list[float], link: str | None, rounds: int, images: int, tmp: Path) -> dict:
    from decnn.emulation.ssh_boards import SshBoards

    checkpoint, even = prepare(tmp)
    planned = tmp / "planned"
    fetch_s = fetch_wheels()
    decnn = str(Path(sys.executable).parent / "decnn")
    run_args = ["--images", str(images), "--no-pin-cores"]
    with SshBoards(cpu, link) as boards:
        hosts = ["--hosts", ",".join(boards.hosts)]
        ssh = ["--ssh-config", str(boards.ssh_config)]

        def laptop(*argv: str) -> tuple[str, float]:
            start = time.monotonic()
            run = boards.laptop([decnn, *argv, *ssh], capture_output=True, text=True)
            if run.returncode:
                raise DeployFailed(next((line for line in run.stderr.splitlines() if "error" in line),
                                        f"{' '.join(argv[:2])} exited with {run.returncode}"))
            return run.stdout, time.monotonic() - start

        def deploy(folder: Path, *argv: str) -> dict:
            out = tmp / "record.json"
            laptop("deploy", str(folder), *argv, *run_args, "--out", str(out))
            return json.loads(out.read_text())

        print("decnn deploy EVEN onto the fresh boards ...", flush=True)
        fresh, fresh_s = laptop("deploy", str(even), *hosts, "--threads", "1", *run_args)
        print("decnn plan --hosts ...", flush=True)
        plan_out, plan_s = laptop("plan", *hosts, str(checkpoint), "--out", str(planned), "--threads", "1")
        print("decnn deploy PLANNED --plan ...", flush=True)
        _, planned_s = laptop("deploy", str(planned), "--plan", *run_args)
        per_round = []
        for r in range(rounds):
            order = [("even", even, (*hosts, "--threads", "1")), ("planned", planned, ("--plan",))]
            records = {}
            for name, folder, argv in order if r % 2 == 0 else order[::-1]:
                records[name] = deploy(folder, *argv)
            per_round.append(records)
            print(f"round {r + 1}: even {records['even']['latency_ms']['p50']:.1f} ms, planned "
                  f"{records['planned']['latency_ms']['p50']:.1f} ms", flush=True)
        held = [_held(home) for home in boards.homes]
    plan = json.loads((planned / "plan.json").read_text())
    even_p50 = [r["even"]["latency_ms"]["p50"] for r in per_round]
    planned_p50 = [r["planned"]["latency_ms"]["p50"] for r in per_round]
    speedup = [a / b for a, b in zip(even_p50, planned_p50)]
    predicted = plan["predicted"]["step_ms"]
    return {
        "setup": {**MODEL, "image_size": IMAGE_SIZE, "cpu": cpu, "link": link or "unshaped veth", "rounds": rounds,
                  "images": images, "threads": 1, "runtime": "decnn edge over ssh (decnn deploy)"},
        "wheels_fetch_s": fetch_s, "fresh_deploy_s": fresh_s, "plan_s": plan_s, "planned_deploy_s": planned_s,
        "fresh_deploy_output": fresh, "plan_output": plan_out,
        "placement": plan["placement"], "candidates": plan["candidates"], "predicted_ms": predicted,
        "even_p50_ms": even_p50, "planned_p50_ms": planned_p50, "speedup": speedup,
        "speedup_median": statistics.median(speedup),
        "prediction_error": (statistics.median(planned_p50) - predicted) / predicted,
        "held": held,
    }


def _held(home: Path) -> dict:
    """What a board holds under ~/.decnn/exports: per export, its files and bytes."""
    exports = home / ".decnn" / "exports"
    return {e.name: {p.name: p.stat().st_size for p in sorted(e.iterdir())} for e in sorted(exports.iterdir())}


def format_markdown(result: dict, command: str) -> str:
    s = result["setup"]
    placement = "/".join(",".join(map(str, d)) for d in result["placement"])
    lines = ["# decnn deploy: a laptop and two boards over ssh", "", f"`{command}`", "",
             f"{s['model']} G{s['groups']} x{s['width']:g}, {s['image_size']}x{s['image_size']}, batch 1, "
             f"{s['images']} images per run, one thread per board; boards at {s['cpu']} of a core, link "
             f"{s['link']}.", "",
             f"- wheels fetched here first: {result['wheels_fetch_s']:.1f} s",
             f"- `decnn deploy EVEN --hosts ...` onto fresh boards (install, copy, run, verify): "
             f"{result['fresh_deploy_s']:.1f} s",
             f"- `decnn plan --hosts ...` (profile, placement {placement}, export): {result['plan_s']:.1f} s",
             f"- `decnn deploy PLANNED --plan`: {result['planned_deploy_s']:.1f} s", "",
             "| round | even p50 ms | planned p50 ms | speed-up |", "|---:|---:|---:|---:|"]
    for i, (a, b, x) in enumerate(zip(result["even_p50_ms"], result["planned_p50_ms"], result["speedup"])):
        lines.append(f"| {i + 1} | {a:.1f} | {b:.1f} | {x:.2f}x |")
    lines += ["", verdict(result), "", "Each board holds (bytes):", ""]
    for board, exports in enumerate(result["held"]):
        for export, files in exports.items():
            lines.append(f"- board {board}, export {export[:8]}: {sum(files.values()):,} bytes: "
                         + ", ".join(f"{n} {b:,}" for n, b in files.items()))
    return "\n".join(lines) + "\n"


def verdict(result: dict) -> str:
    placement = "/".join(",".join(map(str, d)) for d in result["placement"])
    return (f"placement {placement} from the boards' profile: {result['speedup_median']:.2f}x the even placement's "
            f"speed (median of {len(result['speedup'])} rounds); predicted {result['predicted_ms']:.1f} ms, measured "
            f"{statistics.median(result['planned_p50_ms']):.1f} ms ({result['prediction_error']:+.1%})")


def main(argv: list[str] | None = None) -> int:
    """``decnn bench deploy``: 0 done, 2 bad arguments, 1 a failed command or no namespaces here."""
    argv = sys.argv[1:] if argv is None else argv
    return run_main(lambda: _main(argv), usage_errors=(ValueError,), runtime_errors=(DeployFailed, LinkError))


def parser() -> argparse.ArgumentParser:
    p = job_parser("bench deploy", __doc__)
    p.add_argument("--cpu", type=float, nargs=2, default=[1.0, 0.4], help="each board's share of a core "
                   "(default: 1 0.4)")
    p.add_argument("--link", help="the boards' link rate, e.g. 1gbit (default: unshaped veths)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=64, help="timed images per run (default 64)")
    p.add_argument("--out", default="results/deploy.json", help="JSON here, Markdown beside it (.md)")
    return p


def _main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    if args.rounds < 1 or not all(0 < c <= 1 for c in args.cpu):
        raise ValueError("--rounds must be at least 1 and each --cpu in (0, 1]")
    from decnn.emulation.ssh_boards import ssh_boards_available

    ok, reason = ssh_boards_available()
    if not ok:
        raise LinkError(reason)
    with tempfile.TemporaryDirectory(prefix="decnn-bench-deploy-") as tmp:
        result = measure(args.cpu, args.link, args.rounds, args.images, Path(tmp))
    written = write_result(args.out, result, format_markdown(result, " ".join(["decnn bench deploy", *argv])))
    print(verdict(result))
    print(written)


if __name__ == "__main__":
    sys.exit(main())
