"""``infer_distributed.py --plan auto|PROFILE.json``: profile (or load a profile), plan, run the best plan,
and report its prediction beside the measurement.

``auto`` measures the profile first with the run's own devices (local processes through the elastic
launcher); under ``torchrun`` give a profile measured there (``torchrun ... -m decnn.plan profile``), and
every rank derives the same plan from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

from decnn.common.errors import ConfigError
from decnn.distributed.launcher import launch
from decnn.distributed.process import under_launcher
from decnn.inference.runner import preflight, run_rank
from decnn.inference.settings import InferConfig
from decnn.plan.planner import MODES, Plan, format_plans, plan
from decnn.plan.profile import Profile, ProfileArgs, profile_rank


def _profile(cfg: InferConfig, source: str) -> Profile:
    if source != "auto":
        try:
            return Profile.load(source)
        except ValueError as e:
            raise ConfigError(f"--plan {source}: {e}") from None
    if under_launcher():
        raise ConfigError("--plan auto measures a profile with local processes; under torchrun measure it there "
                          "(torchrun ... -m decnn.plan profile --out profile.json) and pass --plan profile.json")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "profile.json")
        job = ProfileArgs(dataclasses.replace(cfg, devices=None, mode="branch"), out)
        print(f"[plan] profiling {cfg.devices or 1} devices at batch {cfg.batch} ...", file=sys.stderr, flush=True)
        if (cfg.devices or 1) > 1:
            launch(profile_rank, (job,), cfg.devices)
        else:
            profile_rank(job)
        return Profile.load(out)


def configure(cfg: InferConfig, best: Plan) -> InferConfig:
    """``cfg`` with the plan's mode, placement, exchange dtype and overlap."""
    placement = "/".join(",".join(map(str, d)) for d in best.placement.devices) if best.placement else None
    return dataclasses.replace(cfg, mode=best.mode, placement=placement, exchange_dtype=best.exchange_dtype,
                               overlap=best.overlap, devices=None if best.mode == "single" else cfg.devices)


def run_planned(cfg: InferConfig, source: str, objective: str) -> dict | None:
    """Plan, print the plan, its prediction and the runner-up, run it; returns rank 0's report (with a
    ``plan`` entry: predicted and measured) or None on other ranks."""
    cfg.check()
    profile = _profile(cfg, source)
    if profile.batch != cfg.batch or profile.num_devices != cfg.world_size:
        raise ConfigError(f"--plan {source}: the profile is for {profile.num_devices} devices at batch "
                          f"{profile.batch}, the run has {cfg.world_size} at batch {cfg.batch}")
    modes = tuple(m for m in MODES if m != "single") if under_launcher() else MODES
    ranked = plan(profile, objective, modes)
    best = ranked[0]
    # The threads the profile was measured with, also when a single process remains.
    run_cfg = dataclasses.replace(configure(cfg, best), threads=cfg.threads or profile.devices[0].threads)
    if not under_launcher() or int(os.environ["RANK"]) == 0:
        print(format_plans(ranked[:2], objective))
        print(f"[plan] running #1: {' '.join(best.infer_args())}", flush=True)
    if under_launcher() or run_cfg.world_size == 1:
        report = run_rank(run_cfg)
    else:
        preflight(run_cfg)
        report = launch(run_rank, (dataclasses.replace(run_cfg, devices=None),), run_cfg.devices)[0]
    if report is None:
        return None
    predicted = best.cost(objective) * 1e3
    measured = report.latency_ms.p50 if objective == "latency" else 1e3 * cfg.batch / report.throughput_ips
    what = "p50 latency" if objective == "latency" else "time per batch (1 / throughput)"
    print(f"[plan] {best.describe()}: predicted {what} {predicted:.2f} ms, measured {measured:.2f} ms "
          f"({(predicted - measured) / measured:+.1%}); runner-up predicted {ranked[1].cost(objective) * 1e3:.2f} ms"
          if len(ranked) > 1 else f"[plan] predicted {predicted:.2f} ms, measured {measured:.2f} ms")
    report = dataclasses.replace(report, plan={
        "objective": objective, "chosen": best.describe(), "args": best.infer_args(), "predicted_ms": predicted,
        "measured_ms": measured, "runner_up": ranked[1].describe() if len(ranked) > 1 else None})
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report
