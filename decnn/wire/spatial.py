"""The peers' spatial splits, as data both runtimes read (no torch): which pixels each device computes, and a
device's program (which pixels of which map it reads, gets from which device, sends).

MoDNN (Mao et al., DATE 2017) cuts each feature map into row bands, Coates et al. (ICML 2013) into a 2-D grid of
tiles, in proportion to the devices' speeds along rows (modnn) or equally (grid); every map is cut anew, so each
device's share of every layer's work follows its speed. A model's features are a chain of *pieces*
(:class:`Layout`): runs of layers that need no pixel from another device. A piece starts wherever a layer reads a
window of a map that the same piece computed (a 3x3 convolution, a pool, a strided 1x1 convolution): its input
must first be completed with halo rows and columns. A layer with output rows ``[a, b)`` and kernel ``k``, stride
``s``, padding ``p`` reads input rows ``[a*s - p, (b-1)*s - p + k)`` (columns alike); the part beyond the map's
border is padding, the part in another device's tile arrives from that device. The layout is plain data (and
JSON): a device without torch reads it from its export and derives its own program for any tiling.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

__all__ = ["SPATIAL_MODES", "DeviceProgram", "Input", "Layout", "Piece", "Receive", "Region", "Send", "SpatialError",
           "Step", "Tiling", "Use", "Window", "compile_programs"]

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


_SLOTS = 16  # a piece's inputs: the tag of a transfer is _TAGS + step * _SLOTS + slot
_TAGS = 100  # below: the runtimes' own messages (MPI's tags reach 32767 at least)


@dataclass(frozen=True)
class Window:
    """How a layer reads its input: its (dilated) kernel extent, stride and padding per axis (rows, columns),
    and the value its padding holds (0 for a convolution, -inf for a max-pool)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    fill: float = 0.0

    def reads(self, out: Region) -> Region:
        """The input pixels that output pixels ``out`` read."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return Region(out.r0 * sh - ph, (out.r1 - 1) * sh - ph + kh, out.c0 * sw - pw, (out.c1 - 1) * sw - pw + kw)


@dataclass(frozen=True)
class Use:
    """One input of a piece: tensor ``tensor`` as its own tile (``window`` None: a per-pixel layer reads it),
    or the pixels that ``window`` reads for a layer whose output map is ``out_size`` (height, width)."""

    tensor: int
    window: Window | None = None
    out_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class Piece:
    inputs: tuple[Use, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class Layout:
    """A model's features as pieces. Tensor 0 is the normalised input image, which every device holds whole;
    ``shapes[t]`` is tensor t's (channels, height, width); the head reads tensor ``features``."""

    shapes: tuple[tuple[int, int, int], ...]
    pieces: tuple[Piece, ...]
    features: int

    def to_dict(self) -> dict:
        def use(u: Use) -> dict:
            if u.window is None:
                return {"tensor": u.tensor}
            w = u.window
            return {"tensor": u.tensor, "kernel": list(w.kernel), "stride": list(w.stride),
                    "padding": list(w.padding), "fill": w.fill, "out_size": list(u.out_size)}

        return {"shapes": [list(s) for s in self.shapes], "features": self.features,
                "pieces": [{"inputs": [use(u) for u in p.inputs], "outputs": list(p.outputs)} for p in self.pieces]}

    @classmethod
    def from_dict(cls, d: dict) -> Layout:
        def use(u: dict) -> Use:
            if "kernel" not in u:
                return Use(u["tensor"])
            window = Window(tuple(u["kernel"]), tuple(u["stride"]), tuple(u["padding"]), u["fill"])
            return Use(u["tensor"], window, tuple(u["out_size"]))

        pieces = tuple(Piece(tuple(use(u) for u in p["inputs"]), tuple(p["outputs"])) for p in d["pieces"])
        return cls(tuple(tuple(s) for s in d["shapes"]), pieces, d["features"])


@dataclass(frozen=True)
class Receive:
    """Pixels ``into`` (in the input buffer's coordinates) arrive from device ``src`` under ``tag``."""

    src: int
    into: Region
    tag: int


@dataclass(frozen=True)
class Send:
    """Pixels ``part`` of this device's tile of ``tensor`` go to device ``dst`` under ``tag``."""

    dst: int
    tensor: int
    part: Region
    tag: int


@dataclass(frozen=True)
class Input:
    """A piece's input on this device: pixels ``region`` of ``tensor``. ``view``: they lie in this device's
    tile (its coordinates), read in place; otherwise a buffer of the region, ``fill`` where it lies past the
    map's border, ``local`` = (part of the tile, where it goes in the buffer), the rest from ``receives``."""

    tensor: int
    region: Region
    fill: float = 0.0
    view: Region | None = None
    local: tuple[Region, Region] | None = None
    receives: tuple[Receive, ...] = ()


@dataclass(frozen=True)
class Step:
    """Run piece ``piece`` on ``inputs`` after sending ``sends``; keep ``outputs``; drop ``release`` after.
    ``group_exchanges``: some device sends halos at this step (every device takes part in the exchange)."""

    piece: int
    inputs: tuple[Input, ...]
    sends: tuple[Send, ...]
    outputs: tuple[int, ...]
    release: tuple[int, ...]
    group_exchanges: bool = False

    @property
    def exchanges(self) -> bool:
        """This device sends or receives at this step."""
        return bool(self.sends) or any(i.receives for i in self.inputs)


@dataclass(frozen=True)
class DeviceProgram:
    """Device ``device``'s steps; its tile (``feature_tile``) of the features (tensor ``features``) lies in a
    map of ``feature_shape`` (channels, height, width); ``exchanges``: the steps at which any device sends."""

    device: int
    devices: int
    tiling: str
    steps: tuple[Step, ...]
    features: int
    feature_tile: Region
    feature_shape: tuple[int, int, int]
    exchanges: int


def compile_programs(layout: Layout, tiling: Tiling) -> list[DeviceProgram]:
    """Every device's program for ``layout`` cut by ``tiling``; SpatialError where a map has fewer rows or
    columns than the tiling has devices along them."""
    n = tiling.devices
    by_size: dict[tuple[int, int], list[Region]] = {}

    def tiles_of(h: int, w: int) -> list[Region]:
        if (h, w) not in by_size:
            by_size[h, w] = tiling.tiles(h, w)
        return by_size[h, w]

    image = Region(0, layout.shapes[0][1], 0, layout.shapes[0][2])
    tiles = [[image] * n] + [tiles_of(h, w) for _, h, w in layout.shapes[1:]]  # the image: whole on every device
    last_use = {u.tensor: s for s, piece in enumerate(layout.pieces) for u in piece.inputs}
    steps: list[list[Step]] = [[] for _ in range(n)]
    for s, piece in enumerate(layout.pieces):
        if len(piece.inputs) > _SLOTS:
            raise SpatialError(f"piece {s} reads {len(piece.inputs)} maps; at most {_SLOTS} are supported")
        inputs: list[list[Input]] = [[] for _ in range(n)]
        sends: list[list[Send]] = [[] for _ in range(n)]
        for slot, use in enumerate(piece.inputs):
            reads = ([use.window.reads(out) for out in tiles_of(*use.out_size)] if use.window
                     else tiles[use.tensor])
            for d in range(n):
                inputs[d].append(_input(layout, tiles[use.tensor], use, reads[d], d, _TAGS + s * _SLOTS + slot, sends))
        release = tuple(t for t in dict.fromkeys(u.tensor for u in piece.inputs)
                        if last_use[t] == s and t != layout.features)
        anyone = any(sends[d] for d in range(n))
        for d in range(n):
            steps[d].append(Step(s, tuple(inputs[d]), tuple(sends[d]), piece.outputs, release, anyone))
    exchanges = sum(steps[0][s].group_exchanges for s in range(len(layout.pieces)))
    return [DeviceProgram(d, n, tiling.describe(), tuple(steps[d]), layout.features, tiles[layout.features][d],
                          layout.shapes[layout.features], exchanges) for d in range(n)]


def _input(layout: Layout, tiles: list[Region], use: Use, region: Region, d: int, tag: int,
           sends: list[list[Send]]) -> Input:
    """Device ``d``'s input ``region`` of ``use.tensor`` (whose tiles are ``tiles``); appends the other devices'
    sends that complete it."""
    t, own = use.tensor, tiles[d]
    _, h, w = layout.shapes[t]
    fill = 0.0 if use.window is None else use.window.fill
    if region & own == region:
        return Input(t, region, fill, view=region.within(own))
    inside = region & Region(0, h, 0, w)
    mine = inside & own
    receives = []
    if t != 0:  # the image is whole on every device
        for e, tile in enumerate(tiles):
            part = inside & tile
            if e != d and not part.empty:
                receives.append(Receive(e, part.within(region), tag))
                sends[e].append(Send(d, t, part.within(tile), tag))
    local = None if mine.empty else (mine.within(own), mine.within(region))
    return Input(t, region, fill, local=local, receives=tuple(receives))
