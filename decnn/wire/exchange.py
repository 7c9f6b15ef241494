"""How DeCNN's exchange lays activations on the wire: the contract both runtimes keep, byte for byte.

At a shuffle point every device sends each other device, in rank order, one *block*: the channels that device
needs (``send_index``'s share for it, in plan order) of every image of the batch, batch-major, ``(B, C_d, H*W)``,
so that a batch's rows leave as they lie, with no transpose. Each ``(image, channel)`` row of ``H*W`` values
goes on the wire as its codec writes it (:data:`EXCHANGE_DTYPES`): fp32 as is, fp16 and bf16 rounded to nearest
even, int8 as 8-bit codes followed by the row's fp32 minimum and step (:data:`INT8_HEADER` bytes). The block a
device keeps for itself never travels. A receiver puts each arriving block's channels where ``recv_index`` says.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXCHANGE_DTYPES = ("fp32", "fp16", "bf16", "int8")
WIRE_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "uint16", "int8": "uint8"}  # a row's element type
INT8_HEADER = 8  # bytes behind an int8 row's codes: its fp32 minimum and step


def row_elements(dtype: str, pixels: int) -> int:
    """Wire elements of one ``(image, channel)`` row of ``pixels`` values."""
    return pixels + (INT8_HEADER if dtype == "int8" else 0)


def check_dtype(name: str) -> str:
    if name not in EXCHANGE_DTYPES:
        raise ValueError(f"unknown exchange dtype {name!r}; choose one of {', '.join(EXCHANGE_DTYPES)}")
    return name


@dataclass(frozen=True)
class ShufflePlan:
    """Device ``device``'s part of the all-to-all at one shuffle point (channel indices are local): it sends
    ``send_index`` in blocks of ``send_splits`` (one per device, its own included) and receives ``recv_splits``
    channels from each device, which, concatenated in source order, ``recv_index`` puts in order."""

    device: int
    send_index: np.ndarray
    send_splits: list[int]
    recv_splits: list[int]
    recv_index: np.ndarray

    @property
    def channels_sent(self) -> int:
        """Channels that leave this device; the block it sends to itself stays local."""
        return sum(self.send_splits) - self.send_splits[self.device]

    def to_dict(self) -> dict:
        return {"device": self.device, "send_index": np.asarray(self.send_index).tolist(),
                "send_splits": list(self.send_splits), "recv_splits": list(self.recv_splits),
                "recv_index": np.asarray(self.recv_index).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> ShufflePlan:
        return cls(d["device"], np.asarray(d["send_index"], np.int64), list(d["send_splits"]),
                   list(d["recv_splits"]), np.asarray(d["recv_index"], np.int64))


@dataclass(frozen=True)
class BlockLayout:
    """Where a plan's channels go: per device, the local channels sent to it (``send``) and where the channels
    arriving from it land in the new local order (``recv``); the channels kept and where they land."""

    device: int
    send: tuple[np.ndarray, ...]
    recv: tuple[np.ndarray, ...]
    keep: np.ndarray
    keep_at: np.ndarray

    @classmethod
    def of(cls, plan: ShufflePlan) -> BlockLayout:
        me = plan.device
        at = np.empty(len(plan.recv_index), np.int64)  # arrival position -> new local position
        at[np.asarray(plan.recv_index)] = np.arange(len(plan.recv_index))
        send_starts = np.cumsum([0, *plan.send_splits])
        recv_starts = np.cumsum([0, *plan.recv_splits])
        index = np.asarray(plan.send_index, np.int64)
        send = tuple(index[send_starts[d]:send_starts[d + 1]] for d in range(len(plan.send_splits)))
        recv = tuple(at[recv_starts[s]:recv_starts[s + 1]] for s in range(len(plan.recv_splits)))
        empty = np.zeros(0, np.int64)
        return cls(me, tuple(empty if d == me else b for d, b in enumerate(send)),
                   tuple(empty if s == me else b for s, b in enumerate(recv)), send[me], recv[me])
