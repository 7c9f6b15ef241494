"""Which pixels of a feature map each device computes: MoDNN's row bands or Coates et al.'s grid of tiles.

Every feature map is cut anew, in proportion to the devices' speeds along rows (``modnn``) or equally in
rows and columns (``grid``), so each device's share of every layer's work follows its speed. A layer's tile
is chosen on its output; the input pixels it reads follow from it (:mod:`decnn.spatial.program`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

SPATIAL_MODES = ("modnn", "grid")


class SpatialError(ValueError):
    """A model, device count or image size that a spatial split cannot serve; the message says what would."""


@dataclass(frozen=True)
class Region:
    """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of a feature map (may reach past its border: padding)."""

    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def rows(self) -> int:
        return max(self.r1 - self.r0, 0)

    @property
    def cols(self) -> int:
        return max(self.c1 - self.c0, 0)

    @property
    def empty(self) -> bool:
        return self.rows == 0 or self.cols == 0

    def __and__(self, other: Region) -> Region:
        return Region(max(self.r0, other.r0), min(self.r1, other.r1), max(self.c0, other.c0), min(self.c1, other.c1))

    def within(self, origin: Region) -> Region:
        """This region in the coordinates of an array that holds ``origin`` (its top-left corner at 0, 0)."""
        return Region(self.r0 - origin.r0, self.r1 - origin.r0, self.c0 - origin.c0, self.c1 - origin.c0)

    def as_list(self) -> list[int]:
        return [self.r0, self.r1, self.c0, self.c1]


def cut(length: int, weights: list[float]) -> list[tuple[int, int]]:
    """``[0, length)`` cut into consecutive parts in proportion to ``weights`` (rounded to whole pixels)."""
    total, bounds, acc = sum(weights), [0], 0.0
    for w in weights:
        acc += w
        bounds.append(int(length * acc / total + 0.5))
    return list(itertools.pairwise(bounds))


@dataclass(frozen=True)
class Tiling:
    """``rows`` x ``cols`` tiles, device ``d`` holding tile (d // cols, d % cols); row heights in proportion
    to ``row_weights`` (MoDNN's bands for devices of unequal speed)."""

    mode: str
    rows: int
    cols: int
    row_weights: tuple[float, ...]

    @classmethod
    def for_mode(cls, mode: str, devices: int, speeds: list[float] | None = None) -> Tiling:
        """``modnn``: one row band per device, as high as the device is fast (``speeds``, default equal);
        ``grid``: the squarest grid of at least 2 x 2 tiles (4 devices: 2 x 2, 8: 4 x 2)."""
        if mode not in SPATIAL_MODES:
            raise SpatialError(f"unknown spatial mode {mode!r}; choose one of {', '.join(SPATIAL_MODES)}")
        if devices < 1:
            raise SpatialError(f"a spatial split needs at least 1 device, not {devices}")
        if speeds is not None and (len(speeds) != devices or min(speeds) <= 0):
            raise SpatialError(f"speeds {list(speeds)}: give one positive relative speed per device ({devices})")
        if mode == "modnn":
            return cls(mode, devices, 1, tuple(speeds or [1.0] * devices))
        if speeds is not None and len(set(speeds)) > 1:
            raise SpatialError("grid tiles are equal (Coates et al.); for devices of unequal speed use modnn, "
                               "whose bands follow the speeds")
        rows = min((r for r in range(2, devices) if devices % r == 0 and r >= devices // r >= 2), default=None)
        if rows is None:
            raise SpatialError(f"a grid needs a device count that factors as rows x columns of at least 2 each "
                               f"(4, 6, 8, 9, ...), not {devices}; with {devices} devices use modnn (row bands)")
        return cls(mode, rows, devices // rows, (1.0,) * rows)

    @property
    def devices(self) -> int:
        return self.rows * self.cols

    def describe(self) -> str:
        return f"{self.rows} row bands" if self.cols == 1 else f"{self.rows} x {self.cols} tiles"

    def tiles(self, height: int, width: int) -> list[Region]:
        """Each device's tile of a ``height`` x ``width`` map; SpatialError if a device would get no pixel."""
        if height < self.rows or width < self.cols:
            raise SpatialError(f"a {height}x{width} feature map cannot give each of {self.describe()} a pixel")
        row_parts, col_parts = cut(height, list(self.row_weights)), cut(width, [1.0] * self.cols)
        tiles = [Region(r0, r1, c0, c1) for r0, r1 in row_parts for c0, c1 in col_parts]
        if any(t.empty for t in tiles):
            raise SpatialError(f"a {height}x{width} feature map cannot give each of {self.describe()} a pixel "
                               f"at speeds {list(self.row_weights)}")
        return tiles
