"""Per-device shards: each device loads only its branch, never the whole model.

``decnn export CHECKPOINT --placement 0,1/2,3 --out DIR`` writes ``DIR/manifest.json`` and one
``DIR/device<d>.pt`` per device: the branch's weights and its exchange plans, stamped with the export's id,
the model and the placement. A worker builds its branch as a weightless (``meta``) skeleton and fills it
from its shard, memory-mapped. A plain checkpoint is opened memory-mapped too, and only the rows a device
owns are read from it.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import timm
import torch
from torch import nn

from decnn.common.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from decnn.partition import Branch, Placement, extract_branch, run_branches_locally
from decnn.wire.exchange import ShufflePlan
from decnn.wire.export_format import FORMAT, MANIFEST, BundleError, write_plans
from decnn.wire.export_format import read_manifest as read_bundle_manifest


class ShardError(ValueError):
    """A shard set that does not fit the run: missing, of another export, placement or model."""


def shard_file(directory: str | Path, device: int) -> Path:
    return Path(directory) / f"device{device}.pt"


def is_shard_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def export_shards(checkpoint: str | Path, placement: Placement, out: str | Path) -> dict:
    """Write one shard per device of ``placement`` and the manifest into ``out``; returns the manifest."""
    ckpt = load_checkpoint(checkpoint)
    model = meta_model(ckpt["model_name"], ckpt["model_kwargs"])
    load_weights(model, ckpt["model"], where=str(checkpoint), assign=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    export_id = uuid.uuid4().hex
    stamp = {"format": FORMAT, "export_id": export_id, "model_name": ckpt["model_name"],
             "model_kwargs": ckpt["model_kwargs"], "placement": placement.as_lists()}
    devices = []
    for d in range(placement.num_devices):
        branch = extract_branch(model, placement, d)
        save_checkpoint(shard_file(out, d), {**stamp, "device": d, "branch": branch.state_dict(),
                                             "plans": [p.to_dict() for p in branch.plans]})
        plans = write_plans(out, {**stamp, "device": d}, branch.plans)
        devices.append({"file": shard_file(out, d).name, "plans": plans.name,
                        "param_bytes": _param_bytes(branch)})
    cfg = model.pretrained_cfg
    manifest = {**stamp, "image_size": ckpt["config"]["data"]["image_size"], "source": str(checkpoint),
                "groups": model.groups, "width": model.width, "stem": model.stem_kind,
                "num_classes": model.num_classes, "mean": list(cfg["mean"]), "std": list(cfg["std"]),
                "devices": devices}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(directory: str | Path) -> dict:
    try:
        return read_bundle_manifest(directory)
    except BundleError as e:
        raise ShardError(str(e)) from None


def check_shards(directory: str | Path, placement: Placement) -> dict:
    """Check before any worker starts that ``directory`` holds a shard for every device of ``placement``."""
    manifest = read_manifest(directory)
    exported = Placement(placement.groups, tuple(map(tuple, manifest["placement"])))
    if exported != placement:
        raise ShardError(
            f"{directory} holds shards for placement {_spec(exported)}, not {_spec(placement)}: pass "
            f"placement={_spec(exported)!r} or export again with `decnn export CHECKPOINT --placement "
            f"{_spec(placement)} --out DIR`"
        )
    missing = [shard_file(directory, d).name for d in range(placement.num_devices)
               if not shard_file(directory, d).is_file()]
    if missing:
        raise ShardError(f"{directory} has no shard {', '.join(missing)}: copy it there, or export again")
    return manifest


def load_shard_branch(directory: str | Path, placement: Placement, device: int) -> Branch:
    """Device ``device``'s branch from its shard, without building the rest of the model."""
    manifest = check_shards(directory, placement)
    path = shard_file(directory, device)
    try:
        shard = torch.load(path, map_location="cpu", weights_only=True)  # its own weights only: read them all
    except Exception as e:
        raise ShardError(f"{path} is not a shard: {str(e).splitlines()[0][:200]}") from None
    expected = {"export_id": manifest["export_id"], "device": device, "model_name": manifest["model_name"],
                "model_kwargs": manifest["model_kwargs"], "placement": placement.as_lists()}
    wrong = [f"{k}={shard.get(k)!r}, expected {v!r}" for k, v in expected.items() if shard.get(k) != v]
    if wrong:
        raise ShardError(f"{path} belongs to another export ({'; '.join(wrong)}): export the folder again")
    branch = extract_branch(meta_model(shard["model_name"], shard["model_kwargs"]), placement, device)
    try:
        load_weights(branch, shard["branch"], where=str(path), assign=True)
    except CheckpointError as e:
        raise ShardError(str(e)) from None
    branch.plans = [ShufflePlan.from_dict(plan) for plan in shard["plans"]]
    return branch.eval()


class ShardedModel(nn.Module):
    """The whole model from a shard folder: every device's fp32 branch in this process, joined by the reference
    exchange (the whole model's logits to float rounding). What ``--verify`` compares a run of shards with."""

    def __init__(self, directory: str | Path):
        super().__init__()
        exported = read_manifest(directory)["placement"]
        placement = Placement(sum(map(len, exported)), tuple(map(tuple, exported)))
        self.branches = nn.ModuleList(load_shard_branch(directory, placement, d) for d in range(len(exported)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_branches_locally(list(self.branches), x)


def load_checkpoint_branch(checkpoint: str | Path, placement: Placement, device: int) -> Branch:
    """Device ``device``'s branch from a whole-model checkpoint, memory-mapped: only its rows are read."""
    ckpt = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=True)
    model = meta_model(ckpt["model_name"], ckpt["model_kwargs"])
    load_weights(model, ckpt["model"], where=str(checkpoint), assign=True)
    return extract_branch(model, placement, device).eval()


def meta_model(name: str, kwargs: dict) -> nn.Module:
    """The model's structure without its weights (on the ``meta`` device)."""
    with torch.device("meta"):
        return timm.create_model(name, **kwargs).eval()


def _param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _spec(placement: Placement) -> str:
    return "/".join(",".join(map(str, dev)) for dev in placement.devices)
