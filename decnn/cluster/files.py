"""What each board receives of an export, and what of it is already there.

Board d receives only what device d reads: the manifest, its exchange plans and its graphs (a spatial export:
every graph, on every board; no export's ``model.onnx`` or torch shards ever leave the laptop). A file goes
over only where the board holds none of that name with the same SHA-256, so a second deploy copies nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from decnn.wire.export_format import MANIFEST, plans_file, split_mode

EXPORTS = "exports"  # ~/.decnn/exports/<export id>/ on a board


def device_files(directory: str | Path, manifest: dict, device: int) -> list[str]:
    """The names of the files device ``device`` reads of the export in ``directory``."""
    if split_mode(manifest) != "branch":
        graphs = manifest["graphs"]
        return [MANIFEST, *graphs["pieces"], graphs["pool"], graphs["classifier"]]
    return [MANIFEST, plans_file(directory, device).name, *manifest["onnx"][device]]


def export_folder(manifest: dict) -> str:
    """Where a board keeps an export, under ~/.decnn."""
    return f"{EXPORTS}/{manifest['export_id']}"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Transfer:
    """The files of one folder a board needs, and those of them it lacks (absent or with other bytes)."""

    files: list[Path]
    missing: list[Path]

    @property
    def bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    @property
    def missing_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.missing)


def transfer(files: list[Path], there: dict[str, str], hashes: dict[Path, str] | None = None) -> Transfer:
    """``files`` against ``there`` (name -> SHA-256 of what the board holds); ``hashes`` caches the local ones."""
    hashes = {} if hashes is None else hashes
    for f in files:
        if f not in hashes:
            hashes[f] = sha256(f)
    return Transfer(list(files), [f for f in files if there.get(f.name) != hashes[f]])
