"""Tiny-ImageNet data: download, validation, the prepared cache, and an offline stand-in.

``TinyImageNet(root, split)`` serves any folder in the Tiny-ImageNet layout (see ``layout.py``),
``ImageFolderTree(root, split)`` an ImageNet-style tree (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``), and
``dataset_class(root)`` picks between them by what is on disk; ``make_standin(root)`` writes a Tiny-ImageNet
layout folder from scikit-learn's digits for offline use.
"""

from decnn.data.folder import ImageFolderTree, dataset_class
from decnn.data.layout import (
    DEFAULT_ROOT,
    STANDIN_ROOT,
    DatasetCorruptError,
    DatasetNotFoundError,
)
from decnn.data.standin import make_standin
from decnn.data.tiny_imagenet import TinyImageNet

__all__ = [
    "DEFAULT_ROOT",
    "STANDIN_ROOT",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "ImageFolderTree",
    "TinyImageNet",
    "dataset_class",
    "make_standin",
]
