"""Decoding one dataset image."""

from pathlib import Path

import numpy as np
from PIL import Image

from decnn.data.layout import IMAGE_SIZE, DatasetCorruptError


def read_image(path: Path) -> np.ndarray:
    """Decode a JPEG into a uint8 array [64, 64, 3] (RGB; greyscale is expanded to 3 channels)."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")  # decodes the whole file, so truncation is caught here
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetCorruptError(f"{path}: cannot decode image ({e})") from e
    if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
        raise DatasetCorruptError(f"{path}: image is {rgb.size[0]}x{rgb.size[1]}, expected 64x64")
    return np.asarray(rgb)
