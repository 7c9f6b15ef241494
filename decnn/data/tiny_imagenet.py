"""The Tiny-ImageNet torch Dataset, served from the prepared cache."""

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from decnn.common.normalization import TINY_MEAN, TINY_STD
from decnn.data import cache
from decnn.data.layout import scan


class TinyImageNet(Dataset):
    """Tiny-ImageNet, or any dataset in its layout, e.g. the digits stand-in.

    ``ds[i]`` is ``(image, label)``: a uint8 tensor [3, 64, 64] (RGB) passed through ``transform``,
    and an int with ``classes[label]`` its wnid. The first use of a split builds its cache.
    """

    mean, std = TINY_MEAN, TINY_STD  # what the transforms normalise with

    def __init__(self, root: str | Path, split: str = "train", transform=None):
        layout = scan(Path(root))
        self.root = layout.root
        self.split = split
        self.transform = transform
        self.classes = layout.classes
        self.class_names = layout.class_names
        self.paths = layout.split(split).paths
        self._images_file, self.labels = cache.load(layout, split)
        self._images = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._images is None:
            self._images = np.load(self._images_file, mmap_mode="r")
        image = torch.from_numpy(np.ascontiguousarray(self._images[index].transpose(2, 0, 1)))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def __getstate__(self) -> dict:
        # A pickled np.memmap carries its whole content: let spawned workers map the file anew.
        return {**self.__dict__, "_images": None}

    def __repr__(self) -> str:
        return (
            f"TinyImageNet(root={str(self.root)!r}, split={self.split!r}, "
            f"images={len(self)}, classes={self.num_classes})"
        )
