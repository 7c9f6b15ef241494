"""The typed config: YAML + overrides, key and type checks, ranges, and round trips."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from decnn.common.errors import ConfigError
from decnn.train.config import TrainingConfig, load_config

CONFIGS = sorted(Path(__file__).parents[1].glob("configs/*.yaml"))


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_are_valid():
    assert load_config() == TrainingConfig()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.model.name.startswith("decnn_")


def test_shipped_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"resnet34.yaml", "decnn_resnet34_g4_x1.5.yaml", "decnn_resnet34_g4_x1.75.yaml",
            "decnn_resnet34_g2_x1.5.yaml"} <= names
    assert any(n.startswith("demo_") for n in names)


def test_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "optim: {lr: 1e-3, name: adamw}\nmodel: {groups: 2}\n")
    cfg = load_config(path, ["model.width=1.75", "optim.nesterov=false", "run.name=123", "schedule.epochs=7"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.name == "adamw"  # YAML reads 1e-3 as a string: still a float
    assert cfg.model.groups == 2 and cfg.model.width == 1.75
    assert cfg.optim.nesterov is False and cfg.schedule.epochs == 7
    assert cfg.run.name == "123"  # str fields take the text as is


def test_int_passes_as_float():
    cfg = load_config(overrides=["model.width=2"])
    assert cfg.model.width == 2.0 and isinstance(cfg.model.width, float)


def test_frozen():
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0


def test_round_trip_through_saved_yaml():
    cfg = load_config(overrides=["model.groups=2", "optim.lr=0.05", "run.name=x"])
    assert load_config(base=yaml.safe_load(cfg.to_yaml())) == cfg
    assert load_config(base=cfg.to_dict()) == cfg


@pytest.mark.parametrize("override, words", [
    ("optim.lrr=0.1", ["optim.lrr", "did you mean 'lr'", "momentum"]),
    ("optm.lr=0.1", ["'optm'", "did you mean 'optim'", "schedule"]),
    ("schedule.epoch=3", ["did you mean 'epochs'"]),
    ("optim.lr", ["section.key=value"]),
    ("schedule.epochs=1.5", ["schedule.epochs must be int", "1.5"]),
    ("optim.lr=fast", ["optim.lr must be float", "'fast'"]),
    ("optim.nesterov=maybe", ["optim.nesterov must be bool"]),
    ("data.batch_size=true", ["data.batch_size must be int"]),
    ("data.batch_size=[1, 2]", ["data.batch_size must be int"]),
    ("data.batch_size=[", ["not valid YAML"]),
])
def test_bad_override_names_the_problem(override, words):
    """An unknown key names the valid ones; a wrongly typed value names the type it must have."""
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    for word in words:
        assert word in str(e.value)


def test_unknown_yaml_key_names_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key data.batchsize \(did you mean 'batch_size'\?\); valid: root"):
        load_config(write(tmp_path, "data:\n  batchsize: 8\n"))


@pytest.mark.parametrize("override", [
    "optim.lr=0", "optim.lr=-0.1", "schedule.epochs=0", "data.batch_size=0", "model.groups=0", "model.width=0",
    "model.stem=huge", "model.name=resnet34", "optim.name=lamb", "optim.momentum=1.0", "schedule.warmup_epochs=200",
    "schedule.min_lr=1.0", "augment.scale_min=0", "augment.label_smoothing=1.0", "train.amp=fp8", "train.device=tpu",
    "data.workers=-1", "run.log_every=0", "run.name=a/b",
])
def test_out_of_range(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"^{key}="):
        load_config(overrides=[override])


def test_bad_yaml_shapes(tmp_path):
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="section 'optim' must be a mapping"):
        load_config(write(tmp_path, "optim: 3\n"))
