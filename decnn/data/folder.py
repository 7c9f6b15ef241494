"""ImageNet-style folder trees (``<root>/train/<wnid>/*.JPEG``, ``<root>/val/<wnid>/*.JPEG``), and choosing
between them and the Tiny-ImageNet layout by what is on disk."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from decnn.data.layout import HOW_TO_GET, LAYOUT, DatasetCorruptError, DatasetNotFoundError
from decnn.data.tiny_imagenet import TinyImageNet

EXTENSIONS = (".jpeg", ".jpg", ".png")
FOLDER_LAYOUT = """\
  <root>/train/<wnid>/<name>.JPEG   training images, one folder per class (any size)
  <root>/val/<wnid>/<name>.JPEG     validation images, the same class folders"""


class ImageFolderTree(Dataset):
    """One split of an ImageNet-style folder tree; label i is the i-th class folder of ``train`` by name.

    ``ds[i]`` is ``(image, label)``: the decoded uint8 tensor [3, H, W] (RGB) passed through ``transform``.
    Images are read from disk on every access (ImageNet does not fit a uint8 cache in memory).
    """

    mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    def __init__(self, root: str | Path, split: str = "train", transform=None):
        self.root, self.split, self.transform = Path(root).absolute(), split, transform
        self.classes = _class_folders(self.root / "train")
        folder = self.root / split
        found = _class_folders(folder)
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            raise DatasetCorruptError(f"{folder / unknown[0]}: class folder not in {self.root / 'train'}")
        index = {wnid: i for i, wnid in enumerate(self.classes)}
        self.paths, labels = [], []
        for wnid in found:
            names = sorted(n for n in os.listdir(folder / wnid) if n.lower().endswith(EXTENSIONS))
            self.paths += [folder / wnid / n for n in names]
            labels += [index[wnid]] * len(names)
        if not self.paths:
            raise DatasetCorruptError(f"{folder}: no images (expected {', '.join(EXTENSIONS)} files)")
        self.labels = torch.tensor(labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.paths[index]
        try:
            with Image.open(path) as file:
                rgb = np.array(file.convert("RGB"))  # greyscale and CMYK JPEGs become RGB
        except (OSError, SyntaxError, ValueError) as e:
            raise DatasetCorruptError(f"{path}: cannot decode image ({e})") from e
        image = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return f"ImageFolderTree(root={str(self.root)!r}, split={self.split!r}, images={len(self)}, " \
               f"classes={self.num_classes})"


def _class_folders(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise DatasetNotFoundError(f"{folder}: missing; an ImageNet-style dataset has\n{FOLDER_LAYOUT}")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not classes:
        raise DatasetCorruptError(f"{folder}: no class folders; expected\n{FOLDER_LAYOUT}")
    return classes


def dataset_class(root: str | Path) -> type[TinyImageNet] | type[ImageFolderTree]:
    """Tiny-ImageNet when ``root`` has a ``wnids.txt``, an ImageNet-style tree when it has class folders."""
    root = Path(root)
    if (root / "wnids.txt").is_file():
        return TinyImageNet
    if (root / "train").is_dir():
        return ImageFolderTree
    raise DatasetNotFoundError(
        f"No dataset at {root.absolute()}: neither the Tiny-ImageNet layout\n{LAYOUT}\n"
        f"nor an ImageNet-style folder tree\n{FOLDER_LAYOUT}\nGet Tiny-ImageNet with\n{HOW_TO_GET}"
    )
