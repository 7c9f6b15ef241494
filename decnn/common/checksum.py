"""``--check-exchange``: a CRC-32 of every block a shuffle point's all-to-all carries, checked on arrival.

The wire is the same in both runtimes: after a shuffle point's all-to-all of activations, a second, tiny
all-to-all carries one CRC-32 (``zlib.crc32``) per destination, as int64 (entry d: of the block for rank d;
its own entry unused). The sender computes them while its activations travel; the receiver computes the CRC
of each block it got and compares. A mismatch names the shuffle point, the sender and the receiver. No torch.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["ExchangeCorrupted", "block_crcs", "check_blocks"]


class ExchangeCorrupted(RuntimeError):
    """A block arrived with other bytes than its sender's (the message is one line)."""


def block_crcs(wire: np.ndarray, splits: list[int], out: np.ndarray) -> np.ndarray:
    """Into ``out`` (int64, one per rank): the CRC-32 of each rank's block of ``wire``, C-contiguous rows (2-D,
    any dtype) in blocks of ``splits[r]`` rows, in rank order."""
    rows = wire.view(np.uint8)
    start = 0
    for r, n in enumerate(splits):
        out[r] = zlib.crc32(rows[start:start + n]) if n else 0
        start += n
    return out


def check_blocks(wire: np.ndarray, splits: list[int], sent: np.ndarray, computed: np.ndarray, point: int,
                 rank: int) -> None:
    """Raise :class:`ExchangeCorrupted` if a block of ``wire`` (received in blocks of ``splits``) does not have
    the CRC its sender sent (``sent[r]``); ``computed`` is scratch space like ``sent``."""
    block_crcs(wire, splits, computed)
    for source, n in enumerate(splits):
        if n and computed[source] != sent[source]:
            raise ExchangeCorrupted(
                f"shuffle point {point}: the block rank {source} sent to rank {rank} arrived corrupted (CRC-32 "
                f"{int(computed[source]):08x}, sent as {int(sent[source]):08x}; --check-exchange)")
