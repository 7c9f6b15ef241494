"""The exchange's codecs on torch tensors: ``(image, channel)`` rows of fp32 onto the wire and back, byte for byte
as :mod:`decnn.wire.exchange` lays them out (the device runtime's numpy codecs write the same bytes)."""

from __future__ import annotations

import torch

from decnn.wire.exchange import INT8_HEADER, check_dtype


class Codec:
    """fp32: the wire rows are the activation rows themselves (nothing to encode)."""

    name = "fp32"
    needs_buffer = False

    def encode(self, rows: torch.Tensor, wire: torch.Tensor) -> torch.Tensor:
        return wire.copy_(rows)

    def decode(self, wire: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return wire


class CastCodec(Codec):
    """A 16-bit float on the wire (rounded to nearest even): half the bytes."""

    needs_buffer = True

    def __init__(self, name: str, dtype: torch.dtype):
        self.name, self.dtype = name, dtype

    def encode(self, rows: torch.Tensor, wire: torch.Tensor) -> torch.Tensor:
        return wire.view(self.dtype).copy_(rows)

    def decode(self, wire: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out.copy_(wire.view(self.dtype))


class Int8Codec(Codec):
    """8-bit affine codes per row, its fp32 minimum and step behind them: a quarter of the bytes plus 8 per row.
    Post-ReLU activations use all 256 levels."""

    name = "int8"
    needs_buffer = True

    def encode(self, rows: torch.Tensor, wire: torch.Tensor) -> torch.Tensor:
        p = rows.shape[1]
        # amin and amax separately: one fused aminmax over the last dim runs ~15x slower on CPU (torch 2.x).
        lo, hi = rows.amin(-1, keepdim=True), rows.amax(-1, keepdim=True)
        step = (hi - lo).clamp_min_(1e-12).div_(255)
        inv = step.reciprocal()
        # x * inv + (0.5 - lo * inv) = (x - lo) / step + 0.5 lies in [0.5, 255.5]: truncating it rounds.
        scaled = torch.mul(rows, inv).add_(inv.mul(lo).neg_().add_(0.5))
        # Through int16: on CPU float -> uint8 is a scalar loop, float -> int16 and int16 -> uint8 are
        # vectorised (the conversion of a batch-1 exchange's first shuffle point: 74 -> 26 us).
        wire[:, :p].copy_(scaled.to(torch.int16))
        wire[:, p:].copy_(torch.cat([lo, step], dim=-1).view(torch.uint8))
        return wire

    def decode(self, wire: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        p = wire.shape[1] - INT8_HEADER
        header = wire[:, p:].contiguous().view(torch.float32)  # (N, 2): minimum, step
        return out.copy_(wire[:, :p]).mul_(header[:, 1:]).add_(header[:, :1])


def make_codec(name: str) -> Codec:
    codecs = {"fp32": Codec, "fp16": lambda: CastCodec("fp16", torch.float16),
              "bf16": lambda: CastCodec("bf16", torch.bfloat16), "int8": Int8Codec}
    return codecs[check_dtype(name)]()
