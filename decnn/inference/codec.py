"""How activations travel at shuffle points: fp32 as is, fp16/bf16 cast, or int8 with per-row scales.

An activation leaves in channels-first rows, ``(C, B, H*W)``, so that one ``all_to_all_single`` can split
it by channel counts along dim 0. A codec turns such rows into wire rows (still one row per channel, so the
same split sizes apply) and back.
"""

from __future__ import annotations

import torch

from decnn.inference.config import EXCHANGE_DTYPES


class Codec:
    """fp32: the wire rows are the activation rows themselves (no copy)."""

    name = "fp32"
    wire_dtype = torch.float32
    needs_buffer = False  # True: wire rows of their own (encode fills one, decode reads one); fp32 needs none

    def row_elements(self, batch: int, pixels: int) -> int:
        """Wire elements per channel row for ``batch`` images of ``pixels`` values each."""
        return batch * pixels

    def encode(self, rows: torch.Tensor, wire: torch.Tensor | None) -> torch.Tensor:
        """Rows ``(C, B, P)`` in fp32 -> wire rows ``(C, row_elements)``, filling ``wire`` if needed."""
        c, b, p = rows.shape  # sizes, not view(C, -1): a rank of a one-device group sends no rows (C = 0)
        return rows.view(c, b * p)

    def decode(self, wire: torch.Tensor, batch: int, out: torch.Tensor) -> torch.Tensor:
        """Wire rows -> fp32 rows ``(C, B, P)``, in ``out`` where a conversion is needed."""
        return wire.view(wire.shape[0], batch, wire.shape[1] // batch)


class CastCodec(Codec):
    """Rounds to a 16-bit float on the wire: half the bytes."""

    needs_buffer = True

    def __init__(self, name: str, dtype: torch.dtype):
        self.name, self.wire_dtype = name, dtype

    def encode(self, rows: torch.Tensor, wire: torch.Tensor) -> torch.Tensor:
        return wire.copy_(rows.view(wire.shape))

    def decode(self, wire: torch.Tensor, batch: int, out: torch.Tensor) -> torch.Tensor:
        return out.copy_(wire.view(out.shape))


class Int8Codec(Codec):
    """8-bit affine quantisation per (channel, image): a quarter of the bytes plus 8 per row for the range.

    Each (channel, image) row carries its own minimum and step as two fp32 values packed behind its codes,
    so the data and its scales travel in the same all-to-all. Post-ReLU activations use all 256 levels.
    """

    name = "int8"
    wire_dtype = torch.uint8
    needs_buffer = True
    _HEADER = 8  # bytes: fp32 minimum, fp32 step

    def row_elements(self, batch: int, pixels: int) -> int:
        return batch * (pixels + self._HEADER)

    def encode(self, rows: torch.Tensor, wire: torch.Tensor) -> torch.Tensor:
        c, b, p = rows.shape
        wire = wire.view(c, b, p + self._HEADER)
        # amin and amax separately: one fused aminmax over the last dim runs ~15x slower on CPU (torch 2.x).
        lo, hi = rows.amin(-1, keepdim=True), rows.amax(-1, keepdim=True)
        step = (hi - lo).clamp_min_(1e-12).div_(255)
        inv = step.reciprocal()
        # x * inv + (0.5 - lo * inv) = (x - lo) / step + 0.5 lies in [0.5, 255.5]: truncating it rounds.
        scaled = torch.mul(rows, inv).add_(inv.mul(lo).neg_().add_(0.5))
        # Through int16: on CPU float -> uint8 is a scalar loop, float -> int16 and int16 -> uint8 are
        # vectorised (the conversion of a batch-1 exchange's first shuffle point: 74 -> 26 us).
        wire[..., :p].copy_(scaled.to(torch.int16))
        wire[..., p:].copy_(torch.cat([lo, step], dim=-1).view(torch.uint8))
        return wire.view(c, b * (p + self._HEADER))

    def decode(self, wire: torch.Tensor, batch: int, out: torch.Tensor) -> torch.Tensor:
        c = wire.shape[0]
        wire = wire.view(c, batch, wire.shape[1] // batch)
        p = wire.shape[-1] - self._HEADER
        header = wire[..., p:].contiguous().view(torch.float32)  # (C, B, 2): minimum, step
        return out.view(c, batch, p).copy_(wire[..., :p]).mul_(header[..., 1:]).add_(header[..., :1])


def make_codec(name: str) -> Codec:
    if name == "fp32":
        return Codec()
    if name == "fp16":
        return CastCodec("fp16", torch.float16)
    if name == "bf16":
        return CastCodec("bf16", torch.bfloat16)
    if name == "int8":
        return Int8Codec()
    raise ValueError(f"unknown exchange dtype {name!r}; choose one of {EXCHANGE_DTYPES}")
