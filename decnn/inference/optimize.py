"""Inference-only rewrites, applied alike to every mode so that their timings compare fairly.

Batch norm in eval mode is an affine map per channel: folding it into the convolution before it removes
an op and a pass over memory per conv. Channels-last (NHWC) weights make oneDNN keep activations NHWC,
its fastest layout on CPU. Measured on this 2-core machine, 1 thread, 64x64: together they take DeCNN
ResNet-34 (G4 x1.5) from 41 to 36 ms per image at batch 1 and from 350 to 253 ms at batch 8.
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_KEEP_BYTES = 1 << 30


def prepare_for_inference(module: nn.Module) -> nn.Module:
    """Fold BN into the preceding conv in ``module.stem`` and every block of ``module.segments``, and switch
    the weights to channels-last (in place).

    Works for a whole decoupled model and for a Branch alike; the result computes the same function up to
    float rounding, and its activations come out channels-last. Blocks stay separate modules, so the
    pipeline baseline can still cut the prepared model between them.

    Convolutions stay grouped: on this machine (1 thread, channels-last, 64x64 input) a grouped conv was
    as fast as or faster than a block-diagonal dense conv (1.4-2.5x slower) and per-group convs
    (1.0-2.2x slower) at every layer shape of a DeCNN branch, batch 1 and 8 (``--kernels`` of the
    benchmark measures it again).
    """
    module.eval()
    module.stem = fuse(module.stem, inplace=True)  # in place: a copy would double the peak memory
    module.segments = nn.ModuleList(nn.Sequential(*(fuse(block, inplace=True) for block in segment))
                                    for segment in module.segments)
    return module.to(memory_format=torch.channels_last)


def is_prepared(module: nn.Module) -> bool:
    """True if no batch norm is left and every conv weight is channels-last (what prepare_for_inference does)."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return (bool(convs) and not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
            and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs))


def keep_freed_memory() -> None:
    """Let glibc reuse freed activation memory instead of handing it back to the OS after every layer.

    By default each multi-MB activation is mmap-ed and unmapped again, so every layer pays fresh page
    faults: at batch 8 that cost a branch's first segment a quarter of its time (40 -> 32 ms). Only the
    allocator's behaviour changes; the peak memory stays what the model needs. A no-op without glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)
    libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
