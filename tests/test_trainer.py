"""The trainer on the offline stand-in: run folder, exact resume, DDP under torchrun, and clear errors.

Also a script: torchrun runs this file as a DDP worker (see ``test_ddp_ranks_agree``).
"""

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from decnn.common.checkpoint import CheckpointError, load_checkpoint
from decnn.common.errors import ConfigError
from decnn.common.logger import NullLogger, make_logger
from decnn.common.record import EXPERIMENT_HPARAMS
from decnn.train.__main__ import main as train_main
from decnn.train.builders import build_optimizer, build_scheduler
from decnn.train.config import load_config
from decnn.train.evaluate import evaluate_checkpoint
from decnn.train.trainer import Trainer, train

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT_KEYS = {"model", "model_name", "model_kwargs", "config", "optimizer", "scheduler", "scaler", "epoch",
                   "best_top1", "best_top5", "rng"}


def tiny_overrides(root, out_dir, name="run") -> list[str]:
    """A 0.35M-parameter DeCNN on 64 images of 32x32, with every augmentation on: seconds per epoch."""
    return [
        "model.name=decnn_resnet34", "model.groups=2", "model.width=0.25", "model.stem=tiny",
        f"data.root={root}", "data.image_size=32", "data.batch_size=16", "data.workers=0",
        "data.max_train_images=64", "data.max_val_images=32",
        "augment.randaugment=5", "augment.mixup_alpha=0.2", "augment.cutmix_alpha=1.0",
        "optim.clip_grad_norm=5.0", "schedule.epochs=2", "schedule.warmup_epochs=1",
        "train.amp=none", "train.channels_last=false", "train.deterministic=true",
        f"run.out_dir={out_dir}", f"run.name={name}", "run.log_every=2",
    ]


@pytest.fixture(scope="module")
def trained(standin, tmp_path_factory):
    """One finished 2-epoch run: (config, fit() result)."""
    cfg = load_config(overrides=tiny_overrides(standin, tmp_path_factory.mktemp("runs")))
    return cfg, train(cfg)


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_folder(trained):
    cfg, result = trained
    run_dir = Path(cfg.run.out_dir) / "run"
    assert result["run_dir"] == run_dir
    assert (run_dir / "config.yaml").read_text() == cfg.to_yaml()
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert ckpt.keys() == CHECKPOINT_KEYS
    assert ckpt["epoch"] == 2 and ckpt["model_name"] == "decnn_resnet34"
    assert ckpt["model_kwargs"] == {"num_classes": 10, "groups": 2, "width": 0.25, "stem": "tiny"}
    assert ckpt["best_top1"] == result["best_top1"] == load_checkpoint(run_dir / "best.pt")["best_top1"]
    assert 0 <= result["best_top1"] <= result["best_top5"] <= 100


def test_tensorboard(trained):
    cfg, result = trained
    events = EventAccumulator(str(Path(cfg.run.out_dir) / "run")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/top1", "val/top5", "val/loss", "perf/images_per_s",
            "perf/epoch_time_s", "hparam/best_top1", "hparam/best_top5"} <= scalars
    assert [e.step for e in events.Scalars("val/top1")] == [1, 2]
    assert events.Scalars("hparam/best_top1")[-1].value == pytest.approx(result["best_top1"])
    session = hparams_metadata.parse_session_start_info_plugin_data(
        events.PluginTagToContent("hparams")[hparams_metadata.SESSION_START_INFO_TAG])
    values = {k: v.string_value or v.number_value for k, v in session.hparams.items()}
    assert {"model": "decnn_resnet34", "groups": "2", "width": 0.25, "stem": "tiny"}.items() <= values.items()
    assert int(values["params"]) > 0 and int(values["flops"]) > 0  # counts as text: one column type each
    assert set(values) <= set(EXPERIMENT_HPARAMS)  # every setting has its column in the HPARAMS tab


def test_resume_continues_exactly(trained, standin):
    """1 epoch, then a resume for the 2nd, ends bitwise where the uninterrupted 2-epoch run ended."""
    cfg, _ = trained
    overrides = tiny_overrides(standin, cfg.run.out_dir, name="interrupted")
    first = Trainer(load_config(overrides=overrides))
    first.step_epoch()
    first.close()
    run_dir = Path(cfg.run.out_dir) / "interrupted"
    result = train(load_config(overrides=[*overrides, f"train.resume={run_dir / 'last.pt'}"]))

    resumed, reference = load_checkpoint(run_dir / "last.pt"), load_checkpoint(Path(cfg.run.out_dir) / "run/last.pt")
    assert resumed["epoch"] == reference["epoch"] == 2
    assert same_tensors(resumed["model"], reference["model"])
    assert torch.equal(resumed["rng"][0]["torch"], reference["rng"][0]["torch"])
    assert resumed["optimizer"]["param_groups"] == reference["optimizer"]["param_groups"]
    for state, ref in zip(resumed["optimizer"]["state"].values(), reference["optimizer"]["state"].values()):
        assert same_tensors(state, ref)
    assert resumed["scheduler"] == reference["scheduler"]
    assert result["best_top1"] == reference["best_top1"]
    assert result["run_dir"] == run_dir and len(list(run_dir.glob("config.resumed-*.yaml"))) == 1


def test_eval_only_reproduces_best(trained):
    cfg, result = trained
    metrics = evaluate_checkpoint(Path(cfg.run.out_dir) / "run/best.pt", cfg)
    assert metrics["top1"] == pytest.approx(result["best_top1"])
    assert metrics["top5"] == pytest.approx(result["best_top5"])


def test_existing_run_folder_is_kept(trained):
    cfg, _ = trained
    run_dir = Path(cfg.run.out_dir) / "run"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    with pytest.raises(FileExistsError, match=r"already exists.*train\.resume="):
        Trainer(cfg)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_resume_of_another_architecture_is_refused(trained, standin):
    cfg, _ = trained
    run_dir = Path(cfg.run.out_dir) / "run"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    other = load_config(overrides=[*tiny_overrides(standin, cfg.run.out_dir), "model.groups=4", "model.width=0.5",
                                   f"train.resume={run_dir / 'last.pt'}"])
    with pytest.raises(CheckpointError, match="groups: 2 in checkpoint, 4 in config"):
        Trainer(other)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_too_few_images_for_a_batch(standin, tmp_path):
    cfg = load_config(overrides=[*tiny_overrides(standin, tmp_path), "data.max_train_images=8"])
    with pytest.raises(ConfigError, match="8 training images do not fill one batch"):
        Trainer(cfg)
    assert not (tmp_path / "run").exists()


def test_optimizer_and_schedule():
    cfg = load_config(overrides=["optim.name=adamw", "optim.lr=0.01", "optim.weight_decay=0.05",
                                 "schedule.epochs=10", "schedule.warmup_epochs=2", "schedule.min_lr=0.001"])
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    optimizer = build_optimizer(cfg.optim, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay = {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in optimizer.param_groups}
    assert decay == {0.05: 16, 0.0: 12}  # only the linear weight is decayed
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch=5)
    lrs = []
    for _ in range(50):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.001) and lrs[9] == pytest.approx(0.01) == max(lrs)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:])) and 0.001 <= lrs[-1] < 0.00102


def test_null_logger(tmp_path):
    log = make_logger(tmp_path / "never", enabled=False)
    assert isinstance(log, NullLogger)
    with log:
        log.scalar("a", 1.0, 0)
        log.scalars({"a": 1.0}, 0)
        log.text("t", "s")
        log.hparams({"h": 1}, {"m": 1.0})
    assert not (tmp_path / "never").exists()


def run_train_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_cli_missing_dataset(tmp_path, capsys):
    # In-process: train.py is this main (tests/test_cli.py checks the script); a usage error raises nothing.
    code = train_main(["--config", str(REPO / "configs/resnet34.yaml"), f"data.root={tmp_path / 'nothing'}",
                       f"run.out_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: No dataset at {tmp_path / 'nothing'}")
    assert "decnn data download" in err
    assert not (tmp_path / "runs").exists()


def test_cli_config_typo(capsys):
    assert train_main(["--config", str(REPO / "configs/resnet34.yaml"), "optim.learning_rate=0.1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key optim.learning_rate" in err and "valid: name, lr," in err


def test_cli_eval_only(trained):
    cfg, result = trained
    out = run_train_py("--eval-only", str(Path(cfg.run.out_dir) / "run/best.pt"))
    assert out.returncode == 0, out.stderr
    assert f"top-1 {result['best_top1']:.2f}%" in out.stdout


def test_ddp_ranks_agree(standin, tmp_path):
    """Two gloo processes under torchrun end with identical weights, and the checkpoint holds them."""
    overrides = [*tiny_overrides(standin, tmp_path), "data.batch_size=8", "schedule.epochs=1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               __file__, json.dumps(overrides), str(tmp_path)]
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    ckpt = load_checkpoint(tmp_path / "run/last.pt")
    assert same_tensors(rank0, rank1)
    assert same_tensors(ckpt["model"], rank0)
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    assert out.stdout.count("epoch 1/1  train loss") == 1  # only rank 0 prints


@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo_resnet34.yaml", "demo_decnn_resnet34_g4_x1.5.yaml"])
def test_demo_learns(name, standin, tmp_path):
    """The baseline and the DeCNN both learn the 10-class stand-in: top-1 far above chance (10%)."""
    cfg = load_config(REPO / "configs" / name, [f"data.root={standin}", f"run.out_dir={tmp_path}"])
    start = time.perf_counter()
    result = train(cfg)
    print(f"{name}: best top-1 {result['best_top1']:.2f}% top-5 {result['best_top5']:.2f}% "
          f"in {time.perf_counter() - start:.0f} s")
    assert result["best_top1"] > 50


def ddp_worker(overrides: list[str], out_dir: str) -> None:
    trainer = Trainer(load_config(overrides=overrides))
    trainer.fit()
    torch.save(trainer.model.state_dict(), Path(out_dir) / f"rank{trainer.rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    ddp_worker(json.loads(sys.argv[1]), sys.argv[2])
