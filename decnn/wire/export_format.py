"""What an export's folder holds, for both runtimes: ``manifest.json`` (the model's facts, the split, one entry
per device) and, for DeCNN's branches, one ``device<d>.plans.json`` per device (its exchange plans, stamped with
the export they belong to). ``decnn export`` writes them; a device reads them without torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from decnn.wire.exchange import ShufflePlan

MANIFEST = "manifest.json"
FORMAT = "decnn-shards/1"
WHOLE_MODEL = "model.onnx"  # the whole model as one graph: the 1-device baseline, the reference of --verify


class BundleError(ValueError):
    """A folder that is not a device's export, or belongs to another export, device or placement."""


def plans_file(directory: str | Path, device: int) -> Path:
    """Device ``device``'s exchange plans as JSON."""
    return Path(directory) / f"device{device}.plans.json"


def split_mode(manifest: dict) -> str:
    """How an export splits the model: ``branch`` (DeCNN's groups), ``modnn`` or ``grid`` (spatial)."""
    return manifest.get("mode", "branch")


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"{directory} is not a shard folder written by `decnn export` ({e})") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def write_plans(directory: str | Path, stamp: dict, plans: list[ShufflePlan]) -> Path:
    """Device ``stamp["device"]``'s plans as JSON, stamped with its export (id, device, placement, ...)."""
    path = plans_file(directory, stamp["device"])
    path.write_text(json.dumps({**stamp, "plans": [p.to_dict() for p in plans]}) + "\n")
    return path


def read_plans(directory: str | Path, manifest: dict, device: int) -> list[ShufflePlan]:
    """Device ``device``'s plans, checked to belong to the export of ``manifest``."""
    path = plans_file(directory, device)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"{path} cannot be read ({e}): copy it from the export, or export again") from None
    expected = {"export_id": manifest["export_id"], "device": device, "placement": manifest["placement"]}
    wrong = [f"{k}={data.get(k)!r}, expected {v!r}" for k, v in expected.items() if data.get(k) != v]
    if wrong:
        raise BundleError(f"{path} belongs to another export ({'; '.join(wrong)}): export the folder again")
    return [ShufflePlan.from_dict(p) for p in data["plans"]]
