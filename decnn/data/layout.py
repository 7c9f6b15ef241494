"""The Tiny-ImageNet folder layout: where things are, parsing, and validation."""

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path("data/tiny-imagenet-200")
STANDIN_ROOT = Path("data/standin-digits")
IMAGE_SIZE = 64
SPLITS = ("train", "val")
_DIGITS = re.compile(r"(\d+)")

LAYOUT = """\
  <root>/wnids.txt                            one class id (wnid) per line; label i = line i
  <root>/words.txt                            <wnid>\\t<name>, for (at least) those ids
  <root>/train/<wnid>/images/<wnid>_<i>.JPEG  training images, 64x64
  <root>/train/<wnid>/<wnid>_boxes.txt        <file>\\t<x0>\\t<y0>\\t<x1>\\t<y1>, one line per image
  <root>/val/images/val_<i>.JPEG              validation images, 64x64
  <root>/val/val_annotations.txt              <file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>
  <root>/test/images/test_<i>.JPEG            unlabelled test images (optional)"""

HOW_TO_GET = """\
  decnn data download                  # from Kaggle (needs Kaggle credentials)
  decnn data download --from-zip PATH  # from a tiny-imagenet-200.zip fetched by hand
  decnn data standin                   # offline stand-in from scikit-learn's digits"""


class DatasetNotFoundError(FileNotFoundError):
    """No dataset at the given root."""


class DatasetCorruptError(ValueError):
    """A dataset file is missing, malformed or undecodable; the message names it."""


@dataclass(frozen=True)
class Split:
    """The labelled images of one split, in a fixed order."""

    paths: list[Path]
    labels: np.ndarray  # int64, one per path

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class Layout:
    """A validated dataset folder."""

    root: Path
    classes: list[str]
    class_names: list[str]
    train: Split
    val: Split
    test: list[Path]

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)

    def summary(self) -> str:
        per_class = np.bincount(self.train.labels, minlength=len(self.classes))
        return "\n".join(
            [
                f"Tiny-ImageNet layout OK: {self.root}",
                f"  classes: {len(self.classes)} ({self.classes[0]} {self.class_names[0]!r}, ...)",
                f"  train:   {len(self.train)} images ({per_class.min()}-{per_class.max()} per class)",
                f"  val:     {len(self.val)} images",
                f"  test:    {len(self.test)} images",
            ]
        )


def scan(root: Path) -> Layout:
    """Parse and validate the dataset at ``root``.

    Raises DatasetNotFoundError when there is no dataset, DatasetCorruptError naming the first
    missing or inconsistent file otherwise. Reads text files and folder listings only; images are
    decoded (and so checked) when the cache is built.
    """
    root = Path(root).absolute()
    if not (root / "wnids.txt").is_file():
        raise DatasetNotFoundError(
            f"No Tiny-ImageNet dataset at {root} (no {root / 'wnids.txt'}).\n"
            f"Expected layout:\n{LAYOUT}\nTo get it:\n{HOW_TO_GET}"
        )
    classes = _read_wnids(root / "wnids.txt")
    index = {wnid: i for i, wnid in enumerate(classes)}
    return Layout(
        root=root,
        classes=classes,
        class_names=_read_names(root / "words.txt", classes),
        train=_scan_train(root / "train", index),
        val=_scan_val(root / "val", index),
        test=_list_images(root / "test" / "images"),
    )


def _read_wnids(path: Path) -> list[str]:
    wnids = path.read_text().split()
    if not wnids:
        raise DatasetCorruptError(f"{path}: no class ids")
    if len(set(wnids)) != len(wnids):
        raise DatasetCorruptError(f"{path}: duplicate class ids")
    return wnids


def _read_names(path: Path, classes: list[str]) -> list[str]:
    names = {row[0]: row[1] for row in _read_rows(path, min_fields=2)}
    missing = [w for w in classes if w not in names]
    if missing:
        raise DatasetCorruptError(f"{path}: no name for class {missing[0]} ({len(missing)} missing)")
    return [names[w] for w in classes]


def _scan_train(train: Path, index: dict[str, int]) -> Split:
    if train.is_dir():
        extra = sorted(p.name for p in train.iterdir() if p.is_dir() and p.name not in index)
        if extra:
            raise DatasetCorruptError(f"{train / extra[0]}: class folder not listed in wnids.txt")
    paths, labels = [], []
    for wnid, label in index.items():
        folder = train / wnid
        if not (folder / "images").is_dir():
            raise DatasetCorruptError(f"{folder / 'images'}: missing class folder")
        images = _list_images(folder / "images")
        if not images:
            raise DatasetCorruptError(f"{folder / 'images'}: no images")
        boxes = folder / f"{wnid}_boxes.txt"
        _check_same_files(boxes, [row[0] for row in _read_rows(boxes, min_fields=5)], images)
        paths += images
        labels += [label] * len(images)
    return Split(paths, np.array(labels, dtype=np.int64))


def _scan_val(val: Path, index: dict[str, int]) -> Split:
    annotations = val / "val_annotations.txt"
    rows = _read_rows(annotations, min_fields=6)
    if not rows:
        raise DatasetCorruptError(f"{annotations}: no annotations")
    for n, row in enumerate(rows, 1):
        if row[1] not in index:
            raise DatasetCorruptError(f"{annotations}:{n}: unknown class {row[1]!r}")
    images = _list_images(val / "images")
    _check_same_files(annotations, [row[0] for row in rows], images)
    wnid_of = {row[0]: row[1] for row in rows}
    return Split(images, np.array([index[wnid_of[p.name]] for p in images], dtype=np.int64))


def _read_rows(path: Path, min_fields: int) -> list[list[str]]:
    if not path.is_file():
        raise DatasetCorruptError(f"{path}: missing")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = line.split("\t")
        if len(row) < min_fields:
            raise DatasetCorruptError(f"{path}:{n}: expected {min_fields} tab-separated fields")
        rows.append(row)
    return rows


def _check_same_files(listing: Path, names: list[str], images: list[Path]) -> None:
    """The annotation file ``listing`` must name exactly the images in the folder."""
    folder = images[0].parent if images else listing.parent / "images"
    on_disk = {p.name for p in images}
    missing = sorted(set(names) - on_disk, key=_natural_key)
    if missing:
        raise DatasetCorruptError(f"{folder / missing[0]}: listed in {listing} but missing")
    unlisted = sorted(on_disk - set(names), key=_natural_key)
    if unlisted:
        raise DatasetCorruptError(f"{folder / unlisted[0]}: image not listed in {listing}")


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    names = [name for name in os.listdir(folder) if name.endswith(".JPEG")]
    return [folder / name for name in sorted(names, key=_natural_key)]


def _natural_key(name: str) -> list:
    """Sort val_2 before val_10."""
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(name)]
