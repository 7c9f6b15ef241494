"""The benchmark's cost-model predictions: one profile per (link, devices, batch), measured over that very
setup with ``decnn plan profile``, then the planner's formulas for every branch configuration."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from decnn.bench.configurations import DECNN, BenchConfig
from decnn.partition import Placement
from decnn.plan.hetero import run_on_hosts
from decnn.plan.planner import predict_branch
from decnn.plan.profile import Profile


def _profile_args(batch: int, out: Path) -> list[str]:
    m = DECNN
    return ["decnn.plan", "profile", "--model", m["model"], "--groups", str(m["groups"]), "--width", str(m["width"]),
            "--batch", str(batch), "--threads", "1", "--out", str(out)]


def measure_profiles(configs: list[BenchConfig], emulated: dict, port: int) -> dict[tuple, Profile]:
    """A profile for every (link, devices, batch) of the branch configurations."""
    setups = sorted({(c.link, c.devices, c.batch) for c in configs if _predicted(c)}, key=str)
    profiles = {}
    with tempfile.TemporaryDirectory() as tmp:
        for link, devices, batch in setups:
            out = Path(tmp) / f"{link}-{devices}-{batch}.json"
            if link:
                port += 1
                run_on_hosts(emulated[(link, devices)], _profile_args(batch, out), port, None)
            else:
                subprocess.run([sys.executable, "-m", *_profile_args(batch, out), "--devices", str(devices)],
                               check=True, capture_output=True, text=True)
            profiles[(link, devices, batch)] = Profile.load(out)
    return profiles


def predictions(configs: list[BenchConfig], profiles: dict[tuple, Profile]) -> dict[str, object]:
    """Each branch configuration's prediction, by label."""
    out = {}
    for c in configs:
        if _predicted(c):
            profile = profiles[(c.link, c.devices, c.batch)]
            placement = Placement.even(profile.groups, c.devices)
            out[c.label()] = predict_branch(profile, placement, c.exchange_dtype, c.overlap)
    return out


def _predicted(config: BenchConfig) -> bool:
    """The cost model predicts the PyTorch runtime's branch split (its profile measures that runtime)."""
    return config.mode == "branch" and config.runtime == "torch"
