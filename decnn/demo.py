"""``make demo``: the whole used-by path on a small real dataset, with the commands a user would type.

1. data: Tiny-ImageNet if ``data/tiny-imagenet-200`` holds it, else the offline digits stand-in;
2. train ResNet-34 and DeCNN ResNet-34 (CPU-sized: quarter width, 32x32 inputs);
3. split inference of the trained DeCNN on 2 local devices (1 thread each), checked against the whole model
   (--verify), and the trained DeCNN and ResNet-34 on one device each (1 thread: the fair baseline on 2 cores);
4. the benchmark at small size (full-size models, random weights);
5. the final table and plot, in two parts that are never mixed: the small trained models, each trained and
   timed here, and the full-size models, timed only; then how to open TensorBoard.

At demo size (quarter width, 32x32 inputs) each layer is so small that per-operation and communication
overheads dominate, and the 2-device split is slower than ResNet-34 on one device; the full-size timings
show where the split pays. The table says both.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from decnn.common.exitcodes import run_main
from decnn.data import DEFAULT_ROOT, STANDIN_ROOT, DatasetCorruptError, DatasetNotFoundError
from decnn.data.layout import scan

MODELS = {"resnet34": "configs/demo_resnet34.yaml", "decnn": "configs/demo_decnn_resnet34_g4_x1.5.yaml"}
# The trained models' timed runs: (what, its infer_distributed.py arguments besides checkpoint and data).
TRAINED_RUNS = {
    "decnn 2dev": ["--devices", "2", "--threads", "1", "--verify"],
    "decnn 1dev": ["--mode", "single", "--threads", "1"],
    "resnet34 1dev": ["--mode", "single", "--threads", "1"],
}
LABELS = {"decnn 2dev": "DeCNN ResNet-34 G4, 2 devices", "decnn 1dev": "DeCNN ResNet-34 G4, 1 device",
          "resnet34 1dev": "ResNet-34, 1 device"}
BENCH_LABELS = {"decnn branch fp32": "DeCNN ResNet-34 G4 x1.5, 2 devices", "decnn single": "DeCNN ResNet-34 G4 x1.5, "
                "1 device", "resnet34 single": "ResNet-34, 1 device", "resnet34 pipeline": "ResNet-34 layer-wise "
                "pipeline, 2 devices", "resnet34 data": "ResNet-34 data-parallel, 2 devices",
                "edge decnn branch fp32": "DeCNN ResNet-34 G4 x1.5, 2 devices without torch (ONNX Runtime + MPI)",
                "edge decnn single": "DeCNN ResNet-34 G4 x1.5, 1 device, ONNX Runtime",
                "edge resnet34 single": "ResNet-34, 1 device, ONNX Runtime"}


def step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def sh(*argv) -> None:
    """Run a command as the user would, echoing it first; stop the demo if it fails."""
    argv = [str(a) for a in argv]
    shown = shlex.join(["python" if a == sys.executable else a for a in argv])
    print(f"$ {shown}", flush=True)
    if subprocess.run(argv).returncode:
        sys.exit(f"demo stopped: `{shown}` failed")


def dataset_overrides() -> list[str]:
    """Tiny-ImageNet (a subset: this is a CPU demo) when it is there, else the stand-in."""
    try:
        scan(DEFAULT_ROOT)
    except (DatasetNotFoundError, DatasetCorruptError):
        print(f"Tiny-ImageNet not found at {DEFAULT_ROOT}: using the offline digits stand-in at {STANDIN_ROOT}")
        sh(sys.executable, "-m", "decnn.data", "standin", "--root", STANDIN_ROOT)
        return []
    print(f"using Tiny-ImageNet at {DEFAULT_ROOT} (a 10,000-image subset)")
    return [f"data.root={DEFAULT_ROOT}", "data.standin=false", "data.max_train_images=10000",
            "data.max_val_images=2000"]


def _trained(out: Path) -> list[tuple[str, dict]]:
    return [(LABELS[name], json.loads((out / f"infer-{name.replace(' ', '-')}.json").read_text()))
            for name in TRAINED_RUNS]


def _full_size(out: Path) -> list[tuple[str, dict]]:
    records = json.loads((out / "bench.json").read_text())["records"]
    return [(BENCH_LABELS[r["name"]], r) for r in records
            if r["name"] in BENCH_LABELS and r["link"] == "loopback" and r["overlap"] == 1]


def summarize(out: Path) -> str:
    """The demo's final table: trained-and-timed small models apart from the timed-only full-size ones."""
    lines = ["Trained and timed here (demo size: width x0.25 / x0.375, 32x32 inputs, batch 1, 1 thread per "
             "device):", "", "| model | val top-1 % | p50 latency ms | params per device MB |", "|---|---:|---:|---:|"]
    for label, r in _trained(out):
        lines.append(f"| {label} | {r['top1']:.1f} | {r['latency_ms']['p50']:.1f} "
                     f"| {max(r['params_per_rank']) / 2**20:.2f} |")
    lines += ["", "Timed only (full size: x1.5 DeCNN vs x1.0 ResNet-34, 64x64 inputs, random weights, batch 1; "
              "one round of the benchmark):", "",
              "| model | p50 latency ms | latency vs ResNet-34 (same runtime) |", "|---|---:|---:|"]
    for label, r in _full_size(out):
        lines.append(f"| {label} | {r['latency_ms']['p50']:.1f} | {r['latency_ratio_vs_resnet34']:.2f}x |")
    lines += ["", "At demo size the layers are so small that per-operation and communication overheads dominate:"
              " the split does not pay there. At full size it does (second table)."]
    return "\n".join(lines)


def _wrap(label: str) -> str:
    """A bar label on lines of at most 12 characters, so that neighbouring labels do not overlap."""
    return "\n".join(textwrap.wrap(label.replace(",", ""), 12))


def plot(out: Path, path: Path) -> None:
    """Accuracy (0-100 %) and latency of the trained small models; latency of the full-size ones, apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained, full = _trained(out), _full_size(out)
    fig, (acc, lat, big) = plt.subplots(1, 3, figsize=(15, 4.2))
    names = [_wrap(label) for label, _ in trained]
    acc.bar(names, [r["top1"] for _, r in trained], color="tab:blue")
    acc.set_ylim(0, 100)  # the whole scale: a point of accuracy looks like a point
    acc.set_ylabel("val top-1 (%)")
    acc.set_title("trained here (demo size)")
    lat.bar(names, [r["latency_ms"]["p50"] for _, r in trained], color="tab:orange")
    lat.set_ylim(0, None)
    lat.set_ylabel("p50 latency, batch 1 (ms)")
    lat.set_title("the same trained models, timed here")
    big.bar([_wrap(label) for label, _ in full], [r["latency_ms"]["p50"] for _, r in full],
            color="tab:green")
    big.set_ylim(0, None)
    big.set_ylabel("p50 latency, batch 1 (ms)")
    big.set_title("full size, random weights (timed only)")
    for ax in (acc, lat, big):
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m decnn.demo", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo configs')")
    args = p.parse_args(argv)
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")

    step("1/5 data")
    data = dataset_overrides()
    data_root = next((o.split("=", 1)[1] for o in data if o.startswith("data.root=")), str(STANDIN_ROOT))

    step("2/5 train ResNet-34 and DeCNN ResNet-34")
    checkpoints = {}
    for name, config in MODELS.items():
        run = f"demo-{name}-{stamp}"
        epochs = [f"schedule.epochs={args.epochs}"] if args.epochs else []
        sh(sys.executable, "train.py", "--config", config, f"run.name={run}", *data, *epochs)
        checkpoints[name] = Path("runs/train") / run / "best.pt"

    out = Path(f"results/demo-{stamp}")
    step("3/5 split inference on 2 devices, checked against the whole model")
    for name, args in TRAINED_RUNS.items():
        sh(sys.executable, "infer_distributed.py", "--checkpoint", checkpoints[name.split()[0]],
           "--data-root", data_root, *args, "--out", out / f"infer-{name.replace(' ', '-')}.json")

    step("4/5 benchmark (full-size ResNet-34 vs DeCNN ResNet-34, random weights, small run)")
    sh(sys.executable, "-m", "decnn.bench", "--batch", "1", "--rounds", "1", "--images", "8",
       "--exchange-dtype", "fp32", "--out", out / "bench.json")

    step("5/5 accuracy and latency: trained small, and timed full size")
    summary = summarize(out)
    (out / "summary.md").write_text(summary + "\n")
    plot(out, out / "summary.png")
    print(summary)

    print(f"\nDemo finished in {(time.time() - started) / 60:.1f} min. Results: {out}/ (summary.md, summary.png)")
    print("TensorBoard logs are under runs/ (train/, infer/, bench/). Open them with:\n"
          "    .venv/bin/tensorboard --logdir runs\n"
          "then the HPARAMS tab, TABLE VIEW: one row per run. The infer/ rows of the trained models show\n"
          "'top-1 % (measured in this run)' beside 'latency p50 (ms per batch)' (and the training's best top-1),\n"
          "with 'architecture' (e.g. resnet34 x0.25, or resnet34 g4 x0.375 for the DeCNN), 'split · runtime',\n"
          "'devices × CPU each' and 'link · exchange · overlap' on the left; the benchmark's rows lead with their\n"
          "name and say 'random weights' under 'accuracy'. `decnn compare runs` prints the same rows.")


if __name__ == "__main__":
    sys.exit(run_main(main))
