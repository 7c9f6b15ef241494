"""One module as an ONNX graph, through torch's supported (dynamo-based) exporter."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch
from torch import nn


def export_graph(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: str | Path, image_dims: bool) -> None:
    """Write ``module(*inputs)`` to ``path`` with inputs ``x`` (or ``x0``, ``x1``, ... for several) and outputs
    ``y`` (or ``y0``, ...). The batch is dynamic; with ``image_dims`` each input's height and width are too (the
    exporter works out how they relate: one graph serves every tile size of a spatial split)."""
    dims = {0: torch.export.Dim("batch")}
    if image_dims:
        dims.update({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO})
    with torch.no_grad():
        outputs = module(*inputs)
    names_in = ["x"] if len(inputs) == 1 else [f"x{i}" for i in range(len(inputs))]
    names_out = [f"y{i}" for i in range(len(outputs))] if isinstance(outputs, (tuple, list)) else ["y"]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # Inputs that share the batch dimension make the exporter say that it names the axis only once.
        warnings.filterwarnings("ignore", message=".*axis name.*shares the same shape constraints")
        torch.onnx.export(module.eval(), inputs, path, input_names=names_in, output_names=names_out, dynamo=True,
                          dynamic_shapes=tuple(dims for _ in inputs), external_data=False, verbose=False)
