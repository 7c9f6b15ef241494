"""TensorBoard's HPARAMS tab as a user sees it: a small runs/ written by the real training, inference and
benchmark code, served by fresh TensorBoard servers and read through the requests the tab's page makes."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hparams_ui import chromium, columns, read_hparams, row, screenshot

from decnn.bench.summary import write as write_bench
from decnn.common.logger import EXPERIMENT_FILE, experiment_root, write_experiment
from decnn.common.record import EXPERIMENT_HPARAMS, EXPERIMENT_METRICS, RunRecord
from decnn.jobs.infer import main as infer_main
from decnn.train.config import load_config
from decnn.train.trainer import train

TINY = ["model.name=decnn_resnet18", "model.width=0.25", "model.stem=tiny", "data.image_size=32",
        "data.batch_size=16", "data.workers=0", "data.max_train_images=32", "data.max_val_images=16",
        "schedule.epochs=1", "schedule.warmup_epochs=0", "train.amp=none", "train.channels_last=false"]
INFER = ["--mode", "single", "--threads", "1", "--num-images", "4", "--batch", "1", "--warmup", "1"]
GROUPS = {"plain": 1, "decnn": 2}
SESSIONS = 5  # two trainings, their two inference runs, one benchmark configuration
STARTS = 3


@pytest.fixture(scope="module")
def runs(standin, tmp_path_factory):
    """runs/ with train/ (a plain ResNet-18 and a DeCNN, one epoch each), infer/ (each checkpoint on its val
    images) and bench/ (a random-weight configuration); returns the folder and the trainings' results."""
    tmp = tmp_path_factory.mktemp("tensorboard")
    root = tmp / "runs"
    trained = {}
    for name, groups in GROUPS.items():
        cfg = load_config(overrides=[*TINY, f"model.groups={groups}", f"data.root={standin}",
                                     f"run.out_dir={root / 'train'}", f"run.name={name}"])
        trained[name] = train(cfg)
        assert infer_main(["--checkpoint", str(root / "train" / name / "best.pt"), "--data-root", str(standin),
                           *INFER, "--log-dir", str(root / "infer")]) == 0
    out = tmp / "random.json"
    assert infer_main(["--random-init", "--model", "decnn_resnet18", "--groups", "1", "--width", "0.25",
                       "--image-size", "32", *INFER, "--log-dir", "", "--out", str(out)]) == 0
    ratios = {f"{what}_ratio_vs_{baseline}": 1.0 for what in ("latency", "throughput")
              for baseline in ("resnet34", "decnn_single")}  # the ResNet-34 baseline, against itself
    record = dataclasses.replace(RunRecord.from_dict(json.loads(out.read_text())), name="resnet34 single",
                                 link="loopback", **ratios)
    write_bench([record], {"started": "20260101-000000"}, tmp / "bench.json", str(root / "bench"))
    return root, trained


@pytest.fixture(scope="module")
def served(runs):
    """What each of several fresh TensorBoard servers shows: (experiment, rows)."""
    return [read_hparams(runs[0], SESSIONS) for _ in range(STARTS)]


def test_one_experiment_for_the_log_root_whoever_wrote_first(runs):
    root, _ = runs
    experiments = sorted(p.relative_to(root) for p in root.rglob(EXPERIMENT_FILE))
    assert experiments == [Path(EXPERIMENT_FILE)]
    before = (root / EXPERIMENT_FILE).stat()
    write_experiment(root)  # a later run logging: the same file, not rewritten
    assert (root / EXPERIMENT_FILE).stat().st_mtime_ns == before.st_mtime_ns


def test_every_fresh_start_shows_every_column(served):
    hparams, metrics = columns(served[0][0])
    assert sorted(hparams) == sorted(EXPERIMENT_HPARAMS) and metrics == list(EXPERIMENT_METRICS)
    for exp, groups in served:
        assert columns(exp) == (hparams, metrics)
        assert len(groups) == SESSIONS
    assert len({tuple(sorted(g["name"] for g in groups)) for _, groups in served}) == 1


def _rows(groups):
    return {g["name"]: row(g) for g in groups}


def test_trained_models_rows_hold_accuracy_and_latency_and_name_their_training(runs, served):
    root, trained = runs
    rows = _rows(served[0][1])
    for name, groups in GROUPS.items():
        training = rows[f"train/{name}"]
        assert training["mode"] == "train" and training["accuracy"] == "best val epoch"
        assert training["hparam/best_top1"] == pytest.approx(trained[name]["best_top1"])
        (inference,) = [r for k, r in rows.items() if k.startswith("infer/") and r["groups"] == str(groups)]
        assert inference["trained_run"] == str(root / "train" / name)
        assert inference["accuracy"] == "measured"
        assert 0 <= inference["infer/top1"] <= 100 and inference["infer/latency_p50_ms"] > 0
        assert inference["hparam/best_top1"] == pytest.approx(trained[name]["best_top1"])  # beside its own
        assert inference["architecture"] == training["architecture"]
    assert rows["train/plain"]["architecture"] == "resnet18 x0.25"  # the plain network by its own name
    assert rows["train/decnn"]["architecture"] == "resnet18 g2 x0.25"
    assert rows["train/plain"]["width"] == rows["train/decnn"]["width"] == 0.25


def test_benchmark_rows_say_random_weights_and_lead_with_their_name(served):
    (bench,) = [r for k, r in _rows(served[0][1]).items() if k.startswith("resnet34 single x1 b1 @loopback · bench/")]
    assert bench["accuracy"] == "random weights" and "infer/top1" not in bench
    assert bench["infer/latency_p50_ms"] > 0 and bench["infer/latency_ratio_vs_resnet34"] == pytest.approx(1.0)


def test_the_logger_does_not_import_torch():
    code = "import sys, decnn.common.logger; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1],
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


@pytest.mark.parametrize("kind, root", [("runs/train", "runs"), ("/x/runs/bench", "/x/runs"), ("myruns", "myruns")])
def test_the_log_root_is_the_folder_above_each_kind_of_run(kind, root):
    assert experiment_root(kind) == Path(root)


@pytest.mark.slow
def test_hparams_table_in_a_real_browser(runs, tmp_path):
    """Headless Chromium renders the HPARAMS tab: a screenshot of more than a blank page."""
    if chromium() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from PIL import Image

    png = screenshot(runs[0], tmp_path / "hparams.png")
    image = Image.open(png).convert("L")
    assert image.size == (1920, 640)
    assert len(set(image.get_flattened_data())) > 16  # text and table lines, not one flat colour
