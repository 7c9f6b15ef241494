"""The prepared cache: a split's decoded images in one uint8 .npy file, read through mmap.

Decoding 100,000 JPEGs costs more than an epoch of a small model on 2 cores, so each split is
decoded once into ``<root>/cache/<split>_images.npy`` (N x 64 x 64 x 3, RGB) and
``<split>_labels.npy`` (int64). ``<split>_manifest.json`` holds a hash of the source file list
(relative path, size, label); the cache is rebuilt when it no longer matches.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from decnn.data.fsutil import atomic_path, file_lock, remove
from decnn.data.images import read_image
from decnn.data.layout import IMAGE_SIZE, SPLITS, Layout, Split

FORMAT_VERSION = 1


@dataclass(frozen=True)
class CacheFiles:
    images: Path
    labels: Path
    manifest: Path


def cache_files(root: Path, split: str) -> CacheFiles:
    folder = Path(root) / "cache"
    return CacheFiles(folder / f"{split}_images.npy", folder / f"{split}_labels.npy", folder / f"{split}_manifest.json")


def load(layout: Layout, split: str) -> tuple[Path, np.ndarray]:
    """Return the images file and the labels of a split, building the cache if missing or stale."""
    files = cache_files(layout.root, split)
    source = layout.split(split)
    key = source_key(layout.root, source)
    if not is_current(files, key, len(source)):
        # One builder at a time (e.g. several DDP ranks); the others then find it current.
        with file_lock(files.manifest.with_suffix(".lock")):
            if not is_current(files, key, len(source)):
                build(source, files, key, desc=f"caching {split}")
    return files.images, np.load(files.labels)


def source_key(root: Path, split: Split) -> str:
    """Hash of the split's relative paths, file sizes and labels."""
    digest = hashlib.sha256(f"decnn cache v{FORMAT_VERSION}\n".encode())
    prefix = len(str(root)) + 1
    for path, label in zip(split.paths, split.labels):
        name = str(path)
        digest.update(f"{name[prefix:]}\t{os.stat(name).st_size}\t{label}\n".encode())
    return digest.hexdigest()


def is_current(files: CacheFiles, key: str, count: int) -> bool:
    try:
        manifest = json.loads(files.manifest.read_text())
        images = np.load(files.images, mmap_mode="r")
        labels = np.load(files.labels, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return (
        manifest.get("key") == key and images.shape == (count, IMAGE_SIZE, IMAGE_SIZE, 3) and labels.shape == (count,)
    )


def build(source: Split, files: CacheFiles, key: str, desc: str = "caching") -> None:
    """Decode every image of ``source`` into the cache files, each written atomically."""
    remove(files.manifest)  # written last: until then the cache counts as absent
    with atomic_path(files.images) as tmp:
        shape = (len(source), IMAGE_SIZE, IMAGE_SIZE, 3)
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        for i, path in enumerate(tqdm(source.paths, desc=desc, unit="img")):
            images[i] = read_image(path)
        images.flush()
        del images
    with atomic_path(files.labels) as tmp, open(tmp, "wb") as f:
        np.save(f, source.labels)
    with atomic_path(files.manifest) as tmp:
        tmp.write_text(json.dumps({"version": FORMAT_VERSION, "key": key, "count": len(source)}))


def prepare(layout: Layout) -> dict[str, Path]:
    """Build (or reuse) the cache of every labelled split; return the images file of each."""
    return {split: load(layout, split)[0] for split in SPLITS}
