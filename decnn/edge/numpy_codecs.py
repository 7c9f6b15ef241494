"""The exchange's codecs in numpy: ``(image, channel)`` rows of fp32 onto the wire and back, byte for byte as
:mod:`decnn.wire.exchange` lays them out (the PyTorch runtime's tensor codecs write the same bytes)."""

from __future__ import annotations

import numpy as np

from decnn.wire.exchange import INT8_HEADER, check_dtype


class Codec:
    """fp32: the wire rows are the activation rows themselves (nothing to encode)."""

    name = "fp32"
    needs_buffer = False

    def encode(self, rows: np.ndarray, wire: np.ndarray) -> np.ndarray:
        np.copyto(wire, rows)
        return wire

    def decode(self, wire: np.ndarray, out: np.ndarray) -> np.ndarray:
        return wire


class Fp16Codec(Codec):
    name = "fp16"
    needs_buffer = True

    def encode(self, rows: np.ndarray, wire: np.ndarray) -> np.ndarray:
        np.copyto(wire, rows, casting="same_kind")
        return wire

    def decode(self, wire: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.copyto(out, wire)
        return out


class Bf16Codec(Codec):
    """bfloat16 (the upper half of an fp32) as uint16, rounded to nearest even like torch's conversion."""

    name = "bf16"
    needs_buffer = True

    def encode(self, rows: np.ndarray, wire: np.ndarray) -> np.ndarray:
        bits = rows.view(np.uint32)
        rounded = bits + (((bits >> 16) & 1) + 0x7FFF).astype(np.uint32)
        rounded = np.where(np.isnan(rows), bits | 0x400000, rounded)  # NaN stays a quiet NaN
        np.right_shift(rounded, 16, out=rounded)
        np.copyto(wire, rounded, casting="unsafe")
        return wire

    def decode(self, wire: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.left_shift(wire, 16, out=out.view(np.uint32), dtype=np.uint32)
        return out


class Int8Codec(Codec):
    """8-bit affine codes per row, its fp32 minimum and step behind them: a quarter of the bytes plus 8 per row."""

    name = "int8"
    needs_buffer = True

    def encode(self, rows: np.ndarray, wire: np.ndarray) -> np.ndarray:
        p = rows.shape[1]
        lo, hi = rows.min(-1, keepdims=True), rows.max(-1, keepdims=True)
        step = np.maximum(hi - lo, np.float32(1e-12)) / np.float32(255)
        inv = np.float32(1) / step
        # x * inv + (0.5 - lo * inv) = (x - lo) / step + 0.5 lies in [0.5, 255.5]: truncating it rounds.
        scaled = rows * inv
        scaled += np.float32(0.5) - inv * lo
        wire[:, :p] = scaled.astype(np.int16)
        wire[:, p:] = np.concatenate([lo, step], axis=-1).view(np.uint8)
        return wire

    def decode(self, wire: np.ndarray, out: np.ndarray) -> np.ndarray:
        p = wire.shape[1] - INT8_HEADER
        header = np.ascontiguousarray(wire[:, p:]).view(np.float32)  # (N, 2): minimum, step
        np.multiply(wire[:, :p], header[:, 1:], out=out)
        out += header[:, :1]
        return out


def make_codec(name: str) -> Codec:
    return {"fp32": Codec, "fp16": Fp16Codec, "bf16": Bf16Codec, "int8": Int8Codec}[check_dtype(name)]()
