"""Which kernel a branch's grouped convolutions should use, measured per layer shape (1 thread); writes JSON.

    decnn bench kernels --out results/kernels.json [--compile]       # on an otherwise idle machine

Device 0's branch of the model (2 devices, even placement), prepared as the workers prepare it (BN folded,
channels-last). Every distinct grouped convolution in it runs three ways on the same weights: the grouped
conv the model uses, one dense conv whose weight is block-diagonal, and one conv per group on its channel
slice followed by a concatenation. With ``--compile`` each segment also runs through ``torch.compile`` (its
compile time is reported). Every round times each shape, batch and way in turn; the report gives per-round
medians, their median and spread, and each way's ratio to the grouped conv.
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
from torch import nn

from decnn.bench.one_branch import median_ms, one_pinned_thread
from decnn.common.job_parser import job_parser
from decnn.inference.optimize import prepare_for_inference
from decnn.partition import Placement, extract_branch


class PerGroupConv(nn.Module):
    """A grouped conv as one conv per group on its channel slice, then a concatenation."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        g, out_per, in_per = conv.groups, conv.out_channels // conv.groups, conv.in_channels // conv.groups
        self.in_per = in_per
        self.convs = nn.ModuleList()
        for i in range(g):
            c = nn.Conv2d(in_per, out_per, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
            c.weight.data.copy_(conv.weight[i * out_per:(i + 1) * out_per])
            if conv.bias is not None:
                c.bias.data.copy_(conv.bias[i * out_per:(i + 1) * out_per])
            self.convs.append(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([c(x[:, i * self.in_per:(i + 1) * self.in_per]) for i, c in enumerate(self.convs)], 1)


def block_diagonal(conv: nn.Conv2d) -> nn.Conv2d:
    """The grouped conv as one dense conv whose weight is zero outside the groups' diagonal blocks."""
    g, out_per, in_per = conv.groups, conv.out_channels // conv.groups, conv.in_channels // conv.groups
    dense = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      bias=conv.bias is not None)
    dense.weight.data.zero_()
    for i in range(g):
        dense.weight.data[i * out_per:(i + 1) * out_per, i * in_per:(i + 1) * in_per] = \
            conv.weight[i * out_per:(i + 1) * out_per]
    if conv.bias is not None:
        dense.bias.data.copy_(conv.bias)
    return dense


def grouped_shapes(branch: nn.Module, image_size: int) -> dict[tuple, nn.Conv2d]:
    """Each distinct grouped conv of ``branch`` (by channels, kernel, stride and input size) and one of them."""
    found: dict[tuple, nn.Conv2d] = {}

    def record(conv, inputs, _):
        if conv.groups > 1:
            h, w = inputs[0].shape[-2:]
            found.setdefault((conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0],
                              conv.groups, h, w), conv)

    hooks = [m.register_forward_hook(record) for m in branch.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():
        x = torch.randn(1, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
        for i in range(len(branch.segments)):
            x = branch.segment(i, x)
    for h in hooks:
        h.remove()
    return found


def _summary(rounds: list[float]) -> dict:
    return {"median_ms": statistics.median(rounds), "min_ms": min(rounds), "max_ms": max(rounds),
            "rounds_ms": rounds}


def main(argv: list[str] | None = None) -> int:
    p = job_parser("bench kernels", __doc__)
    p.add_argument("--model", default="decnn_resnet34")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=20, help="timed passes per round, shape, batch and way")
    p.add_argument("--compile", action="store_true", help="also time each segment through torch.compile")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.iters < 1:
        p.error("--rounds and --iters must be >= 1, e.g. --rounds 3 --iters 20")

    one_pinned_thread()
    torch.manual_seed(0)
    model = timm.create_model(args.model).eval()
    placement = Placement.even(model.groups, 2)
    branch = prepare_for_inference(extract_branch(model, placement, 0))
    shapes = grouped_shapes(branch, args.image_size)
    ways = {shape: {"grouped": conv, "block-diagonal dense": block_diagonal(conv), "per-group": PerGroupConv(conv)}
            for shape, conv in shapes.items()}
    inputs = {(shape, n): torch.randn(n, shape[0], shape[5], shape[6]).contiguous(memory_format=torch.channels_last)
              for shape in shapes for n in args.batches}
    runs: dict[tuple, list[float]] = {}
    segments, compile_s = {}, {}
    with torch.inference_mode():
        for shape, modules in ways.items():  # the three ways agree; then a warm-up
            for name, m in modules.items():
                m.to(memory_format=torch.channels_last)
                for n in args.batches:
                    x = inputs[shape, n]
                    assert (m(x) - modules["grouped"](x)).abs().max() <= 1e-3, (shape, name)
        if args.compile:
            segment_inputs, x = [], torch.randn(1, 3, args.image_size, args.image_size)
            for i in range(len(branch.segments)):
                segment_inputs.append(x.contiguous(memory_format=torch.channels_last))
                x = branch.segment(i, x)
            for i, x in enumerate(segment_inputs):
                eager = functools.partial(branch.segment, i)  # segment 0 with the stem
                start = time.perf_counter()
                compiled = torch.compile(eager)
                compiled(x)
                compile_s[i] = time.perf_counter() - start
                segments[i] = {"eager": eager, "compiled": compiled, "input": x}
        for _ in range(args.rounds):
            for shape, modules in ways.items():
                for n in args.batches:
                    for name, m in modules.items():
                        runs.setdefault((shape, n, name), []).append(median_ms(m, inputs[shape, n], args.iters))
            for i, seg in segments.items():
                for name in ("eager", "compiled"):
                    runs.setdefault((("segment", i), 1, name), []).append(
                        median_ms(seg[name], seg["input"], args.iters))
    rows = []
    for (shape, n, name), r in runs.items():
        base = statistics.median(runs[shape, n, "eager" if shape[0] == "segment" else "grouped"])
        what = ({"segment": shape[1], "compile_s": compile_s[shape[1]]} if shape[0] == "segment" else
                dict(zip(("in_channels", "out_channels", "kernel", "stride", "groups", "height", "width"), shape)))
        rows.append({**what, "batch": n, "way": name, **_summary(r), "ratio": statistics.median(r) / base})
    report = {"model": args.model, "image_size": args.image_size, "device": 0, "placement": placement.as_lists(),
              "threads": 1, "rounds": args.rounds, "iters": args.iters, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        where = (f"segment {row['segment']}" if "segment" in row else
                 f"{row['in_channels']}->{row['out_channels']} k{row['kernel']} s{row['stride']} "
                 f"g{row['groups']} {row['height']}x{row['width']}")
        print(f"{where:>32} batch {row['batch']} {row['way']:>21}: {row['median_ms']:7.3f} ms "
              f"({row['min_ms']:.3f}..{row['max_ms']:.3f}) x{row['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
