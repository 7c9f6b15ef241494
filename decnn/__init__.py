"""decnn: decoupled CNNs (DeCNN) for split inference across edge devices.

``import decnn`` is light (no torch): the command lines check their arguments before anything heavy loads.
The DeCNN models are registered with timm as soon as timm is imported, before or after decnn, so that
``import decnn, timm; timm.create_model("decnn_resnet34")`` works.
``decnn.split(...)`` runs a model split across worker processes (see :mod:`decnn.serve.split_model`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"


def __getattr__(name: str):
    # decnn.split pulls in torch.distributed and the inference stack: only when it is used.
    if name == "split":
        from decnn.serve.split_model import split

        return split
    raise AttributeError(f"module 'decnn' has no attribute {name!r}")


class _RegisterWithTimm(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``timm`` for the normal loader and, once timm has loaded, imports decnn.models (which registers
    the models): nobody can call ``timm.create_model`` before that."""

    def find_spec(self, name, path, target=None):
        if name != "timm":
            return None
        sys.meta_path.remove(self)  # one import of timm per process; find the real spec without us
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        self._loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        importlib.import_module("decnn.models")


if "timm" in sys.modules:
    importlib.import_module("decnn.models")
elif not any(isinstance(finder, _RegisterWithTimm) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithTimm())
