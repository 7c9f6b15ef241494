"""Spatial splits, the peers DeCNN is measured against: every device computes a tile of every feature map.

MoDNN (Mao et al., DATE 2017) cuts each feature map into row bands, Coates et al. (ICML 2013) into a 2-D
grid of tiles; before a layer that reads a window of pixels (a convolution or pool wider than 1x1, or a
strided one) a device receives the halo rows and columns its tile needs from the devices that hold them.
Every device holds all the weights.

This package imports no torch, so that both runtimes share it: :mod:`~decnn.spatial.tiling` (which pixels a
device computes), :mod:`~decnn.spatial.program` (a device's steps, derived from the model's layout and the
tiling, and their JSON form) and :mod:`~decnn.spatial.executor` (running the steps with a runtime's arrays,
pieces and transport). ``decnn.partition.spatial`` reads a torch model into its layout and pieces.
"""

from decnn.spatial.program import DeviceProgram, Layout, Piece, Use, Window, compile_programs
from decnn.spatial.tiling import SPATIAL_MODES, Region, SpatialError, Tiling

__all__ = [
    "SPATIAL_MODES",
    "DeviceProgram",
    "Layout",
    "Piece",
    "Region",
    "SpatialError",
    "Tiling",
    "Use",
    "Window",
    "compile_programs",
]
