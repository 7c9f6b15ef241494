"""What a call of a split model may carry, and the error of one that its workers cannot answer: shared by
``decnn.split``'s client (:mod:`decnn.serve.split_model`) and the elastic one (:mod:`decnn.serve.elastic_model`)."""

from __future__ import annotations

import torch

from decnn.serve import worker


class WorkerError(RuntimeError):
    """The workers failed (a process died, or could not start); the split model is closed."""


def check_images(images, closed: bool) -> torch.Tensor:
    """The images of a call, or a clear error: closed, not a tensor, another dtype or shape."""
    if closed:
        raise WorkerError("this split model is closed; start a new one with decnn.split(...)")
    example = "e.g. a uint8 tensor of shape [8, 3, 64, 64]"
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of images, got {type(images).__name__}; {example}")
    if images.dtype not in worker.DTYPES:
        raise TypeError(f"images of dtype {images.dtype}: pass uint8 images (0..255) or float32 normalised "
                        f"inputs; {example}")
    if images.dim() != 4 or images.shape[0] < 1 or images.shape[1] != 3 or min(images.shape[2:]) < 8:
        raise ValueError(f"images of shape {list(images.shape)}: expected [B, 3, H, W] with B >= 1 and "
                         f"H, W >= 8; {example}")
    return images
