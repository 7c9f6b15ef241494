"""Regenerate the tables of ``paper/README.md`` from a benchmark JSON and the training runs.

The report's prose stays as written; only the blocks between ``<!-- decnn:begin NAME -->`` and
``<!-- decnn:end NAME -->`` are replaced:

    decnn bench paper --bench results/bench.json --runs runs
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from decnn.bench.compare import load_runs
from decnn.bench.summary import bench_table
from decnn.bench.summary import read as read_bench
from decnn.common.exitcodes import run_main
from decnn.common.job_parser import job_parser
from decnn.common.record import MB, RunRecord

REPORT = Path("paper/README.md")


def accuracy_table(runs: dict[str, RunRecord]) -> str:
    """One row per training run: its best val top-1 and its parameters (fp32)."""
    lines = ["| run | model | groups | width | val top-1 (%) | params (M) |", "|---|---|---:|---:|---:|---:|"]
    for run, r in runs.items():
        if r.mode == "train":
            params = r.params_per_device_mb * MB / 4 / 1e6 if r.params_per_device_mb else float("nan")
            lines.append(f"| {run} | {r.model} | {r.groups:g} | {r.width:g} | {r.top1:.2f} | {params:.2f} |")
    return "\n".join(lines)


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- decnn:begin {name} -->\n).*?(<!-- decnn:end {name} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"{REPORT} has no block '{name}' (<!-- decnn:begin {name} --> ... <!-- decnn:end {name} -->)")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def main(argv=None) -> None:
    p = job_parser("bench paper", __doc__)
    p.add_argument("--bench", help="benchmark JSON (decnn bench --out ...)")
    p.add_argument("--runs", help="runs folder with training runs, for the accuracy table")
    p.add_argument("--report", type=Path, default=REPORT)
    args = p.parse_args(argv)
    text = args.report.read_text()
    if args.bench:
        meta, records = read_bench(args.bench)
        note = (f"_Measured {meta['started']} with `decnn bench {' '.join(meta['argv'])}` "
                f"({meta['cores']} cores, torch {meta['torch']}, 1 thread per process)._\n\n")
        text = replace_block(text, "bench", note + bench_table(records))
    if args.runs:
        text = replace_block(text, "accuracy", accuracy_table(load_runs(args.runs)))
    args.report.write_text(text)
    print(f"updated {args.report}")


if __name__ == "__main__":
    # A missing or malformed benchmark JSON, runs folder or report is an input error (exit 2, one line).
    sys.exit(run_main(main, usage_errors=(OSError, ValueError)))
