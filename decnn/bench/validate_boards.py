"""Emulated boards, validated: the 2-device speed-up on boards of a fraction of a core against whole cores.

Needs root (cgroups).

    sudo .venv/bin/decnn bench boards --out results/boards.json
    sudo .venv/bin/decnn bench boards --cpu 1 0.5 0.25 --rounds 5 --images 64

Exports a random-init DeCNN ResNet-34 G4 x1.5 (64x64) for 1 and 2 devices, then, every round and at every CPU
fraction F, runs its whole model on one board of F and its split on two boards of F (``decnn edge``, unpinned,
one thread each); a round's speed-up is the ratio of their p50 latencies. The emulation holds where the median
speed-up at every F lies within 10% of that at the first F (whole cores). Writes JSON and Markdown beside it.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from decnn.bench.boards import Boards, BoardsError
from decnn.bench.summary import write_result
from decnn.common.exitcodes import run_main
from decnn.common.job_parser import job_parser
from decnn.emulation.netns import LinkError
from decnn.emulation.quota import quotas_available

TOLERANCE = 0.10


def validate(single_dir: str | Path, split_dir: str | Path, fractions: tuple[float, ...] = (1.0, 0.5),
             rounds: int = 3, images: int = 64, warmup: int = 3, batch: int = 1) -> dict:
    """Interleaved rounds of the whole model on 1 board (``single_dir``'s export) and its 2-device split
    (``split_dir``'s) at each CPU fraction; per fraction the rounds' latencies and speed-ups, their median and
    its ratio to the first fraction's, and the split's per-rank breakdown in its median round."""
    check(fractions, rounds)
    args = ["--images", images, "--warmup", warmup, "--batch", batch]
    runs = {f: [] for f in fractions}
    for r in range(rounds):
        for f in fractions[r % len(fractions):] + fractions[:r % len(fractions)]:  # no fraction always first
            with Boards(1, f) as boards:
                whole = boards.edge(single_dir, args, single=True)
            with Boards(2, f) as boards:
                split = boards.edge(split_dir, args)
            runs[f].append((whole, split))
    rows = [_row(f, runs[f]) for f in fractions]
    for row in rows:
        row["vs_first"] = row["speedup_median"] / rows[0]["speedup_median"]
    worst = max(rows, key=lambda row: abs(row["vs_first"] - 1))
    return {
        "setup": {"model": runs[fractions[0]][0][1].model, "groups": runs[fractions[0]][0][1].groups,
                  "width": runs[fractions[0]][0][1].width, "image_size": runs[fractions[0]][0][1].image_size,
                  "batch": batch, "images": images, "warmup": warmup, "rounds": rounds, "devices": 2,
                  "threads": 1, "pinned": False, "runtime": "decnn edge (ONNX Runtime + MPI)",
                  "transport": runs[fractions[0]][0][1].transport},
        "fractions": rows,
        "ratio": worst["vs_first"],
        "within_tolerance": abs(worst["vs_first"] - 1) <= TOLERANCE,
        "tolerance": TOLERANCE,
    }


def check(fractions: tuple[float, ...], rounds: int) -> None:
    """Raise ValueError, in one line, for settings the validation cannot run."""
    if rounds < 1 or not fractions:
        raise ValueError(f"need at least 1 round and 1 CPU fraction; got {rounds} round(s), fractions {fractions}")
    for f in fractions:
        Boards(2, f)  # raises for a fraction out of (0, 1] or two boards of it beyond this machine's cores


def _row(fraction: float, runs: list) -> dict:
    single = [whole.latency_ms.p50 for whole, _ in runs]
    split = [s.latency_ms.p50 for _, s in runs]
    speedup = [a / b for a, b in zip(single, split)]
    median_round = sorted(range(len(runs)), key=lambda i: speedup[i])[len(runs) // 2]
    return {"cpu": fraction, "single_p50_ms": single, "split_p50_ms": split, "speedup": speedup,
            "speedup_median": statistics.median(speedup), "speedup_min": min(speedup), "speedup_max": max(speedup),
            "breakdown_per_rank": runs[median_round][1].breakdown_per_rank}


def format_markdown(result: dict, command: str) -> str:
    """The validation's tables: per round, per fraction, and where each rank's time went."""
    s = result["setup"]
    lines = ["# Emulated boards: validation", "", f"`{command}`", "",
             f"{s['model']} G{s['groups']} x{s['width']:g}, {s['image_size']}x{s['image_size']}, batch "
             f"{s['batch']}, {s['images']} images after {s['warmup']} warm-up steps, {s['rounds']} interleaved "
             f"rounds; {s['runtime']} over {s['transport']}, one thread per board, unpinned; each board in its own "
             "CPU quota (10 ms period).", "",
             "| CPU per board | round | 1 board p50 ms | 2 boards p50 ms | speed-up |", "|---:|---:|---:|---:|---:|"]
    for row in result["fractions"]:
        for i, (a, b, x) in enumerate(zip(row["single_p50_ms"], row["split_p50_ms"], row["speedup"])):
            lines.append(f"| {row['cpu']:g} | {i + 1} | {a:.1f} | {b:.1f} | {x:.2f}x |")
    lines += ["", "| CPU per board | speed-up, median (min-max) | vs the first |", "|---:|---:|---:|"]
    for row in result["fractions"]:
        lines.append(f"| {row['cpu']:g} | {row['speedup_median']:.2f}x ({row['speedup_min']:.2f}-"
                     f"{row['speedup_max']:.2f}) | {row['vs_first']:.3f} |")
    lines += ["", verdict(result), "",
              "Per rank, the split's median round (ms per batch; CPU while waiting lies within peer wait + wire):", "",
              "| CPU per board | rank | step | segments | peer wait | wire | CPU while waiting | other |",
              "|---:|---:|---:|---|---:|---:|---:|---:|"]
    for row in result["fractions"]:
        for rank, b in enumerate(row["breakdown_per_rank"]):
            segments = " + ".join(f"{t:.1f}" for t in b["segments_ms"])
            lines.append(f"| {row['cpu']:g} | {rank} | {b['step_ms']:.1f} | {segments} | {b['peer_wait_ms']:.2f} "
                         f"| {b['wire_ms']:.2f} | {b.get('wait_cpu_ms', float('nan')):.2f} | {b['other_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def verdict(result: dict) -> str:
    rows = result["fractions"]
    first, last = rows[0], rows[-1]
    holds = "holds" if result["within_tolerance"] else "does NOT hold"
    return (f"2-device speed-up {last['speedup_median']:.2f}x at {last['cpu']:g} core per board, "
            f"{first['speedup_median']:.2f}x at {first['cpu']:g}: ratio {last['vs_first']:.3f}; the emulation "
            f"{holds} (largest deviation {result['ratio'] - 1:+.1%}, tolerance {result['tolerance']:.0%})")


def main(argv: list[str] | None = None) -> int:
    """``decnn bench boards``: 0 done, 2 bad arguments, 1 a failed run or no cgroups here (one line each)."""
    argv = sys.argv[1:] if argv is None else argv
    return run_main(lambda: _main(argv), usage_errors=(ValueError,), runtime_errors=(BoardsError, LinkError))


def _main(argv: list[str]) -> None:
    p = job_parser("bench boards", __doc__)
    p.add_argument("--cpu", type=float, nargs="+", default=[1.0, 0.5],
                   help="CPU fractions per board; the first is the reference (default: 1 0.5)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=64, help="timed images per run (default 64)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", default="results/boards.json", help="JSON here, Markdown beside it (.md)")
    args = p.parse_args(argv)
    check(tuple(args.cpu), args.rounds)  # before the export's minute
    ok, reason = quotas_available()
    if not ok:
        raise LinkError(reason)
    from decnn.bench.configurations import BenchConfig
    from decnn.bench.edge import export_kind, export_models  # imports torch: after the arguments are checked

    configs = [BenchConfig("edge decnn single", "single", 1, args.batch, runtime="edge"),
               BenchConfig("edge decnn branch fp32", "branch", 2, args.batch, runtime="edge")]
    with tempfile.TemporaryDirectory(prefix="decnn-bench-boards-") as tmp:
        print("exporting DeCNN ResNet-34 G4 x1.5 for 1 and 2 devices ...", flush=True)
        folders = export_models(configs, Path(tmp))
        result = validate(folders[export_kind(configs[0])], folders[export_kind(configs[1])], tuple(args.cpu),
                          args.rounds, args.images, args.warmup, args.batch)
    written = write_result(args.out, result, format_markdown(result, " ".join(["decnn bench boards", *argv])))
    print(verdict(result))
    print(written)


if __name__ == "__main__":
    sys.exit(main())
