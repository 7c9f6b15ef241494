"""decnn: decoupled CNNs (DeCNN) for split inference across edge devices.

Importing the package registers the DeCNN models with timm, so that
``timm.create_model("decnn_resnet34")`` works after ``import decnn``.
"""

from decnn import models  # noqa: F401  (registers the models with timm)

__version__ = "0.1.0"
