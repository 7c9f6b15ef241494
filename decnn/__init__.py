"""decnn: decoupled CNNs (DeCNN) for split inference across edge devices.

Importing the package registers the DeCNN models with timm, so that
``timm.create_model("decnn_resnet34")`` works after ``import decnn``. ``decnn.split(...)`` runs a model split
across worker processes (see :mod:`decnn.runtime`).
"""

from decnn import models  # noqa: F401  (registers the models with timm)

__version__ = "0.1.0"


def __getattr__(name: str):
    # decnn.split pulls in torch.distributed and the inference stack: only when it is used.
    if name == "split":
        from decnn.runtime import split

        return split
    raise AttributeError(f"module 'decnn' has no attribute {name!r}")
