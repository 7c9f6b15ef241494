"""``make demo``: the whole used-by path on a small real dataset, with the commands a user would type.

1. data: Tiny-ImageNet if ``data/tiny-imagenet-200`` holds it, else the offline digits stand-in;
2. train ResNet-34 and DeCNN ResNet-34 (CPU-sized: quarter width, 32x32 inputs);
3. split inference of the trained DeCNN on 2 local devices (1 thread each), checked against the whole model
   (--verify), and the trained ResNet-34 on one device (1 thread: the fair baseline on 2 cores);
4. the benchmark at small size (full-size models, random weights);
5. the comparison table and plot; then how to open TensorBoard.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from decnn.data import DEFAULT_ROOT, STANDIN_ROOT, DatasetCorruptError, DatasetNotFoundError
from decnn.data.layout import scan
from decnn.exitcodes import run_main

MODELS = {"resnet34": "configs/demo_resnet34.yaml", "decnn": "configs/demo_decnn_resnet34_g4_x1.5.yaml"}


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

    step("3/5 split inference on 2 devices, checked against the whole model")
    sh(sys.executable, "infer_distributed.py", "--checkpoint", checkpoints["decnn"], "--data-root", data_root,
       "--devices", "2", "--verify", "--out", f"results/demo-{stamp}/infer-decnn-2dev.json")
    sh(sys.executable, "infer_distributed.py", "--checkpoint", checkpoints["resnet34"], "--data-root", data_root,
       "--mode", "single", "--threads", "1", "--out", f"results/demo-{stamp}/infer-resnet34-1dev.json")

    step("4/5 benchmark (full-size ResNet-34 vs DeCNN ResNet-34, random weights, small run)")
    sh(sys.executable, "-m", "decnn.bench", "--batch", "1", "--rounds", "1", "--images", "8",
       "--exchange-dtype", "fp32", "fp16", "--out", f"results/demo-{stamp}/bench.json")

    step("5/5 compare accuracy and latency")
    sh(sys.executable, "-m", "decnn.bench.compare", "runs", "--plot", f"results/demo-{stamp}/compare.png")

    print(f"\nDemo finished in {(time.time() - started) / 60:.1f} min. Results: results/demo-{stamp}/")
    print("TensorBoard logs are under runs/ (train/, infer/, bench/). Open them with:\n"
          "    .venv/bin/tensorboard --logdir runs\n"
          "and compare the runs in the HPARAMS tab (accuracy, latency, throughput, params per device).")


if __name__ == "__main__":
    sys.exit(run_main(main))
