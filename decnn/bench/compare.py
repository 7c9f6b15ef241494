"""Compare training and inference runs: one table and an accuracy-vs-latency plot, read from TensorBoard.

Every run logs one HPARAMS row (its settings and headline metrics) into its TensorBoard folder; this module
reads those rows back as :class:`~decnn.common.record.RunRecord`s, so the table here and TensorBoard's HPARAMS tab
always show the same numbers.

    decnn compare runs/ --plot results/compare.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from decnn.common.exitcodes import run_main
from decnn.common.job_parser import job_parser
from decnn.common.record import RecordError, RunRecord

COLUMNS = (
    "model", "groups", "width", "mode", "devices", "link", "batch",
    "top1", "latency_p50_ms", "throughput_ips", "params_per_device_mb", "bytes_per_image",
)


def read_run(run_dir: Path) -> tuple[dict, dict[str, float]] | None:
    """The hparams and the last value of every scalar a run logged, or None if it logged no HPARAMS row."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    try:
        start_info = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    except KeyError:
        return None
    start = plugin_data_pb2.HParamsPluginData.FromString(start_info).session_start_info
    hparams = {name: _value(v) for name, v in start.hparams.items()}
    return hparams, {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}


def _value(v):
    kind = v.WhichOneof("kind")
    return {"number_value": v.number_value, "string_value": v.string_value, "bool_value": v.bool_value}[kind]


def load_runs(root: str | Path) -> dict[str, RunRecord]:
    """The record of every run under ``root`` with an HPARAMS row, by its folder relative to ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no runs folder at {root}; train.py and infer_distributed.py write to runs/")
    runs = {}
    for run_dir in sorted({p.parent for p in root.rglob("events.out.tfevents.*")}):
        logged = read_run(run_dir)
        if logged is not None:
            try:
                runs[str(run_dir.relative_to(root))] = RunRecord.from_tensorboard(*logged)
            except RecordError as e:
                raise RecordError(f"{run_dir}: {e}") from None
    return runs


def comparison_rows(runs: dict[str, RunRecord]) -> list[dict]:
    """Table rows (top-1 in %); a run without its own top-1 takes its checkpoint's training best, or else the
    best top-1 trained for its model."""
    trained = {}
    for r in runs.values():
        if r.mode == "train":
            key = (r.model, r.groups, r.width)
            trained[key] = max(trained.get(key, -1.0), r.top1)
    rows = []
    for run, r in runs.items():
        row = {c: getattr(r, c) for c in COLUMNS if c != "latency_p50_ms"}
        row["latency_p50_ms"] = r.latency_ms.p50 if r.latency_ms else None
        if row["top1"] is None:
            row["top1"] = r.trained_top1 if r.trained_top1 is not None else trained.get((r.model, r.groups, r.width))
        rows.append({"run": run, **{c: row[c] for c in COLUMNS}})
    return rows


def comparison_table(rows: list[dict]) -> str:
    lines = ["| run | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in ("run", *COLUMNS)) + " |")
    return "\n".join(lines)


def _cell(v) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if not v.is_integer() else f"{int(v)}"
    return str(v)


def plot(rows: list[dict], path: str | Path) -> Path:
    """Accuracy (top-1) against latency (p50) for every run that has both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if r["top1"] is not None and r["latency_p50_ms"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in points:
        ax.scatter(r["latency_p50_ms"], r["top1"])
        label = f"{r['model']} g{_cell(r['groups'])} x{_cell(r['width'])} {r['mode']}x{_cell(r['devices'])}"
        ax.annotate(label + (f" {r['link']}" if r["link"] else ""), (r["latency_p50_ms"], r["top1"]),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.margins(x=0.3, y=0.2)  # room for the labels
    ax.set_xlabel("latency p50 per batch (ms)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Accuracy vs latency" if points else "Accuracy vs latency (no run has both yet)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = job_parser("compare", __doc__)
    p.add_argument("runs", nargs="?", default="runs", help="folder with the runs (default: runs)")
    p.add_argument("--plot", metavar="FILE.png", help="also draw accuracy vs latency")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of Markdown")
    args = p.parse_args(argv)
    try:
        rows = comparison_rows(load_runs(args.runs))
    except (FileNotFoundError, RecordError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=2) if args.json else comparison_table(rows))
    if args.plot:
        print(f"plot: {plot(rows, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
