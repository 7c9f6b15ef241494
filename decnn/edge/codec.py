"""The exchange's wire formats in numpy, byte for byte those of the PyTorch runtime (decnn.inference.codec).

An activation leaves in channels-first rows ``(C, B, H*W)``; a codec turns them into wire rows (one per
channel, so the all-to-all's split sizes stay channel counts) and back: fp32 as is, fp16 and bf16 rounded to
nearest even, int8 with each (channel, image) row's fp32 minimum and step packed behind its 8-bit codes.
"""

from __future__ import annotations

import numpy as np

EXCHANGE_DTYPES = ("fp32", "fp16", "bf16", "int8")


class Codec:
    """fp32: the wire rows are the activation rows themselves (no copy)."""

    name = "fp32"
    wire_dtype = np.dtype(np.float32)
    needs_buffer = False  # True: wire rows of their own (encode fills one, decode reads one)

    def row_elements(self, batch: int, pixels: int) -> int:
        """Wire elements per channel row for ``batch`` images of ``pixels`` values each."""
        return batch * pixels

    def encode(self, rows: np.ndarray, wire: np.ndarray | None) -> np.ndarray:
        """Rows ``(C, B, P)`` in fp32 -> wire rows ``(C, row_elements)``, filling ``wire`` if needed."""
        c, b, p = rows.shape  # sizes, not reshape(C, -1): a rank of a one-device group sends no rows (C = 0)
        return rows.reshape(c, b * p)

    def decode(self, wire: np.ndarray, batch: int, out: np.ndarray) -> np.ndarray:
        """Wire rows -> fp32 rows ``(C, B, P)``, in ``out`` where a conversion is needed."""
        return wire.reshape(wire.shape[0], batch, wire.shape[1] // batch)


class Fp16Codec(Codec):
    name = "fp16"
    wire_dtype = np.dtype(np.float16)
    needs_buffer = True

    def encode(self, rows: np.ndarray, wire: np.ndarray) -> np.ndarray:
        np.copyto(wire, rows.reshape(wire.shape), casting="same_kind")
        return wire

    def decode(self, wire: np.ndarray, batch: int, out: np.ndarray) -> np.ndarray:
        np.copyto(out, wire.reshape(out.shape))
        return out


class Bf16Codec(Codec):
    """bfloat16 (the upper half of an fp32) as uint16, rounded to nearest even like torch's conversion."""

    name = "bf16"
    wire_dtype = np.dtype(np.uint16)
    needs_buffer = True

    def encode(self, rows: np.ndarray, wire: np.ndarray) -> np.ndarray:
        bits = rows.reshape(wire.shape).view(np.uint32)
        rounded = bits + (((bits >> 16) & 1) + 0x7FFF).astype(np.uint32)
        rounded = np.where(np.isnan(rows.reshape(wire.shape)), bits | 0x400000, rounded)  # NaN stays a quiet NaN
        np.right_shift(rounded, 16, out=rounded)
        np.copyto(wire, rounded, casting="unsafe")
        return wire

    def decode(self, wire: np.ndarray, batch: int, out: np.ndarray) -> np.ndarray:
        bits = out.reshape(wire.shape).view(np.uint32)
        np.left_shift(wire, 16, out=bits, dtype=np.uint32)
        return out


class Int8Codec(Codec):
    """8-bit affine codes per (channel, image) row, its fp32 minimum and step behind the codes: a quarter of
    the bytes plus 8 per row."""

    name = "int8"
    wire_dtype = np.dtype(np.uint8)
    needs_buffer = True
    _HEADER = 8  # bytes: fp32 minimum, fp32 step

    def row_elements(self, batch: int, pixels: int) -> int:
        return batch * (pixels + self._HEADER)

    def encode(self, rows: np.ndarray, wire: np.ndarray) -> np.ndarray:
        c, b, p = rows.shape
        view = wire.reshape(c, b, p + self._HEADER)
        lo, hi = rows.min(-1, keepdims=True), rows.max(-1, keepdims=True)
        step = np.maximum(hi - lo, np.float32(1e-12)) / np.float32(255)
        inv = np.float32(1) / step
        # x * inv + (0.5 - lo * inv) = (x - lo) / step + 0.5 lies in [0.5, 255.5]: truncating it rounds.
        scaled = rows * inv
        scaled += np.float32(0.5) - inv * lo
        view[..., :p] = scaled.astype(np.int16)
        view[..., p:] = np.concatenate([lo, step], axis=-1).view(np.uint8)
        return wire

    def decode(self, wire: np.ndarray, batch: int, out: np.ndarray) -> np.ndarray:
        c = wire.shape[0]
        view = wire.reshape(c, batch, wire.shape[1] // batch)
        p = view.shape[-1] - self._HEADER
        header = np.ascontiguousarray(view[..., p:]).view(np.float32)  # (C, B, 2): minimum, step
        rows = out.reshape(c, batch, p)
        np.multiply(view[..., :p], header[..., 1:], out=rows)
        rows += header[..., :1]
        return out


def make_codec(name: str) -> Codec:
    codecs = {"fp32": Codec, "fp16": Fp16Codec, "bf16": Bf16Codec, "int8": Int8Codec}
    if name not in codecs:
        raise ValueError(f"unknown exchange dtype {name!r}; choose one of {', '.join(EXCHANGE_DTYPES)}")
    return codecs[name]()
