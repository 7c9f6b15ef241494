"""Tiny-ImageNet data: download, validation, the prepared cache, and an offline stand-in.

``TinyImageNet(root, split)`` serves any folder in the Tiny-ImageNet layout (see ``layout.py``);
``make_standin(root)`` writes such a folder from scikit-learn's digits for offline use.
"""

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
    "TinyImageNet",
    "make_standin",
]
