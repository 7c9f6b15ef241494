"""The model table: params and GFLOPs at 64x64, whole model and per device (``decnn models``).

    decnn models                      # the README's table
    decnn models --groups 8 --width 1.75 --devices 2 4
    decnn models --write-golden       # refresh decnn/models/golden.json after an intended change
"""

from __future__ import annotations

import json

import timm

from decnn.common.job_parser import job_parser
from decnn.models.decoupled_resnet import STEMS, DecoupledResNet
from decnn.models.stats import GOLDEN_PATH, count_flops, count_params, golden_stats, model_names
from decnn.partition import Placement, extract_branches


def branch_stats(model, num_devices: int, size: int) -> dict:
    """Params and FLOPs of the whole model and of each device's branch (even placement)."""
    branches = extract_branches(model, Placement.even(model.groups, num_devices))
    shape = (1, 3, size, size)

    def no_exchange(*args):
        return args[-1]  # shapes are unchanged by the exchange and the reduce, and FLOPs are all we count here

    return {
        "params": count_params(model),
        "flops": count_flops(model, shape),
        "params_per_device": [count_params(b) for b in branches],
        "flops_per_device": [count_flops(b, shape, forward=lambda x, b=b: b(x, no_exchange, no_exchange))
                             for b in branches],
    }


def table_rows(names, variants, devices, stem, size) -> list[dict]:
    rows = []
    for name in names:
        for groups, width in variants or [(1, 1.0), (None, None)]:
            resnet = timm.models.model_entrypoint(name).__module__ == DecoupledResNet.__module__
            stem_arg = {"stem": stem} if resnet else {}  # the VGG has one stem
            kwargs = {**stem_arg, **({} if groups is None else {"groups": groups, "width": width})}
            model = timm.create_model(name, **kwargs)
            # A model with too few groups for any requested count is shown whole, on one device.
            for n in [n for n in devices if model.groups % n == 0] or [1]:
                rows.append({"model": name, "groups": model.groups, "width": model.width, "devices": n,
                             **branch_stats(model, n, size)})
    return rows


def model_table(rows: list[dict], size: int) -> str:
    lines = [
        f"| model | groups | width | params (M) | GFLOPs @{size}px | devices | params/device (M) | GFLOPs/device |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['groups']} | {r['width']:g} | {r['params'] / 1e6:.2f} | {r['flops'] / 1e9:.3f} "
            f"| {r['devices']} | {max(r['params_per_device']) / 1e6:.2f} | {max(r['flops_per_device']) / 1e9:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = job_parser("models", __doc__)
    p.add_argument("--models", nargs="+", default=None, help="registered names (default: all decnn_*)")
    p.add_argument("--groups", type=int, nargs="+", help="with --width (default: 1 and each model's own)")
    p.add_argument("--width", type=float, nargs="+", help="width multipliers, one per --groups value")
    p.add_argument("--devices", type=int, nargs="+", default=[2], help="device counts (those dividing groups)")
    p.add_argument("--stem", default="tiny", choices=STEMS)
    p.add_argument("--size", type=int, default=64, help="input resolution for FLOPs")
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    p.add_argument("--write-golden", action="store_true", help=f"rewrite {GOLDEN_PATH.name} and exit")
    args = p.parse_args(argv)
    if args.write_golden:
        GOLDEN_PATH.write_text(json.dumps(golden_stats(), indent=2) + "\n")
        print(f"wrote {GOLDEN_PATH}")
        return
    if (args.groups is None) != (args.width is None) or (args.groups and len(args.groups) != len(args.width)):
        p.error("--groups and --width go together, one width per groups value")
    variants = list(zip(args.groups, args.width)) if args.groups else None
    rows = table_rows(args.models or model_names(), variants, args.devices, args.stem, args.size)
    print(json.dumps(rows, indent=2) if args.json else model_table(rows, args.size))


if __name__ == "__main__":
    main()
