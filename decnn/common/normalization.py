"""Tiny-ImageNet's per-channel statistics: what the models' default configs state and the data sets normalise
with (one definition, below both; like timm's ``IMAGENET_DEFAULT_MEAN``)."""

TINY_MEAN = (0.480, 0.448, 0.398)
TINY_STD = (0.277, 0.269, 0.282)
