"""The benchmark's cost-model predictions: one profile per (model, link, devices, batch), measured over that
very setup with ``decnn plan profile`` (``--spatial`` for the plain model's spatial splits), then the
planner's formulas for every branch and spatial configuration of the PyTorch runtime."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from decnn.bench.configurations import BenchConfig
from decnn.partition import Placement
from decnn.plan.hetero import run_on_hosts
from decnn.plan.planner import predict_branch
from decnn.plan.profile import Profile
from decnn.plan.spatial import predict_spatial
from decnn.wire.spatial import SPATIAL_MODES


def _profile_args(config: BenchConfig, out: Path) -> list[str]:
    m = config.model
    args = ["decnn.plan", "profile", "--model", m["model"], "--groups", str(m["groups"]), "--width", str(m["width"]),
            "--batch", str(config.batch), "--image-size", str(config.image_size), "--threads", "1", "--out", str(out)]
    return args + (["--stem", m["stem"]] if "stem" in m else []) + (["--spatial"] if _spatial(config) else [])


def _setup(config: BenchConfig) -> tuple:
    """What a profile is measured for: the model, the link, the devices and the batch."""
    return str(sorted(config.model.items())), config.image_size, config.link, config.devices, config.batch


def measure_profiles(configs: list[BenchConfig], emulated: dict, port: int) -> dict[tuple, Profile]:
    """A profile for every setup of the predicted configurations."""
    setups = {_setup(c): c for c in configs if _predicted(c)}
    profiles = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (setup, config) in enumerate(sorted(setups.items(), key=lambda kv: str(kv[0]))):
            out = Path(tmp) / f"profile{i}.json"
            if config.link:
                port += 1
                run_on_hosts(emulated[(config.link, config.devices)], _profile_args(config, out), port, None)
            else:
                subprocess.run([sys.executable, "-m", *_profile_args(config, out), "--devices", str(config.devices)],
                               check=True, capture_output=True, text=True)
            profiles[setup] = Profile.load(out)
    return profiles


def predictions(configs: list[BenchConfig], profiles: dict[tuple, Profile]) -> dict[str, object]:
    """Each predicted configuration's prediction, by label."""
    out = {}
    for c in configs:
        if _predicted(c):
            profile = profiles[_setup(c)]
            out[c.label()] = (predict_spatial(profile, c.mode) if _spatial(c) else
                              predict_branch(profile, Placement.even(profile.groups, c.devices), c.exchange_dtype,
                                             c.overlap))
    return out


def _spatial(config: BenchConfig) -> bool:
    return config.mode in SPATIAL_MODES


def _predicted(config: BenchConfig) -> bool:
    """The cost model predicts the PyTorch runtime's splits (its profile measures that runtime)."""
    return config.mode in ("branch", *SPATIAL_MODES) and config.runtime == "torch"
