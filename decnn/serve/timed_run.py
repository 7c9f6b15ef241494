"""``decnn infer --elastic``: a long timed run through an elastic split, the path of ``decnn.split(elastic=True)``.

The caller streams the images (cycling them for ``--duration`` seconds) one batch per call, and reports the
timeline: per group of devices its placement, latency and, with ``--verify``, its answers against the whole
model; per membership change its cause and how long no call was answered. A call that gets no answer within
``--deadline`` ends the run (exit 1) saying which devices are left, and so do answers beyond ``--verify``'s bound.
"""

from __future__ import annotations

import json
import sys
import time
from itertools import accumulate
from pathlib import Path

import torch

from decnn.common.logger import make_logger
from decnn.common.verification import check, compare
from decnn.inference.inputs import batch_sizes
from decnn.inference.metrics import topk_accuracy
from decnn.inference.runner import open_inputs
from decnn.inference.settings import InferConfig
from decnn.inference.spec import resolve_model
from decnn.serve.elastic_model import ElasticSplitModel
from decnn.serve.timeline import Timeline

_PROGRESS_EVERY_S = 5.0


def run_elastic(cfg: InferConfig) -> dict:
    """Run, report (console, ``--out`` JSON, TensorBoard under ``--log-dir``) and return the report; raise
    VerificationError if ``--verify`` found answers beyond the bound."""
    spec = resolve_model(cfg)
    source = open_inputs(cfg, spec)
    sizes = batch_sizes(len(source), cfg.batch)
    starts = list(accumulate(sizes[:-1], initial=0))
    calls: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []  # batch index, logits, labels
    with ElasticSplitModel(cfg, spec, cfg.devices or 0, (cfg.min_devices, cfg.max_devices), cfg.rdzv_endpoint,
                           cfg.deadline) as model:
        print(f"[infer] elastic split at {model.endpoint}: {len(model.local_devices)} devices here, others join "
              f"with `decnn device {model.endpoint} --nnodes {model.nnodes[0]}:{model.nnodes[1]}`",
              file=sys.stderr, flush=True)
        begin = last_line = time.monotonic()
        while len(calls) < len(sizes) or (cfg.duration and time.monotonic() - begin < cfg.duration):
            b = len(calls) % len(sizes)
            images, labels = source.batch(starts[b], sizes[b])
            calls.append((b, model(images), labels))
            if time.monotonic() - last_line > _PROGRESS_EVERY_S:
                last_line = time.monotonic()
                group = model.timeline.groups[model.timeline.answers[-1].epoch]
                print(f"[infer] {len(calls)} calls, {last_line - begin:.0f} s; group {group['epoch']}: "
                      f"{', '.join(d['device'] for d in group['devices'])}", file=sys.stderr, flush=True)
    timeline = model.timeline
    report = _report(cfg, spec, timeline, calls, source, starts, sizes)
    _write(cfg, spec, timeline, report)
    check(report)
    return report


def _report(cfg, spec, timeline: Timeline, calls, source, starts, sizes) -> dict:
    report = {"model": spec.name, "groups": spec.groups, "width": spec.width, "batch": cfg.batch,
              "devices_here": cfg.devices or 0, "timeout_s": cfg.timeout, "calls": len(calls),
              "images": sum(sizes[b] for b, _, _ in calls)}
    if calls[0][2] is not None:
        report.update(topk_accuracy(torch.cat([y for _, y, _ in calls]), torch.cat([t for _, _, t in calls])))
    if cfg.verify:
        reference_model, refs = spec.build(), {}
        with torch.inference_mode():
            for b in sorted({b for b, _, _ in calls}):
                refs[b] = reference_model(_normalize(spec, source.batch(starts[b], sizes[b])[0]))
        for epoch in timeline.groups:
            mine = [i for i, a in enumerate(timeline.answers) if a.epoch == epoch]
            if mine:
                timeline.checks[epoch] = _compare(cfg, [calls[i] for i in mine], refs, starts)
        report.update(_compare(cfg, calls, refs, starts))
    report["timeline"] = timeline.to_dict()
    return report


def _compare(cfg, calls, refs, starts) -> dict:
    """``calls``' answers against the whole model's (``refs``, per batch); the worst image by its index."""
    result = compare(torch.cat([y for _, y, _ in calls]).numpy(), torch.cat([refs[b] for b, _, _ in calls]).numpy(),
                     cfg.exchange_dtype)
    images = [starts[b] + i for b, y, _ in calls for i in range(len(y))]
    return {**result, "worst_image": images[result["worst_image"]]}


def _normalize(spec, images: torch.Tensor) -> torch.Tensor:
    from decnn.inference.inputs import Normalize

    return Normalize(spec.mean, spec.std, torch.device("cpu"))(images)


def _write(cfg: InferConfig, spec, timeline: Timeline, report: dict) -> None:
    """The console table and summary, ``--out`` JSON and, under ``--log-dir``, the run's TensorBoard."""
    print(timeline.table(), flush=True)
    checked = (f"; max |dlogit| vs the whole model {report['max_abs_diff']:.1e}, top-1 agreement "
               f"{report['top1_agreement']:.4f}, {'verified' if report['verified'] else 'NOT verified'} (bound "
               f"{report['verify_bound']:g})" if "max_abs_diff" in report else "")
    print(f"{report['calls']} calls ({report['images']} images), each answered once{checked}", flush=True)
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(report, indent=2) + "\n")
    if cfg.log_dir:
        name = f"{spec.name}-g{spec.groups}-x{spec.width:g}-elastic-b{cfg.batch}-{time.strftime('%Y%m%d-%H%M%S')}"
        with make_logger(Path(cfg.log_dir) / name) as log:
            for i, a in enumerate(timeline.answers):
                group = timeline.groups.get(a.epoch, {"devices": []})
                log.scalars({"elastic/latency_ms": (a.answered_s - a.submitted_s) * 1e3,
                             "elastic/devices": len(group["devices"]), "elastic/group": a.epoch}, i)
            log.text("elastic/timeline", timeline.table())
