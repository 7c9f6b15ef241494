"""A rank's set-up, shared by the benchmark runner and the persistent workers of ``decnn.split``.

From the spec, the rank builds only what its mode needs (branch mode: its branch alone, from shards or a
memory-mapped checkpoint, or its ONNX graphs with ``backend="onnxruntime"``) and wraps it in the mode
object whose ``step`` runs a batch across the ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from decnn.comm import Communicator
from decnn.inference.baselines import DataMode, SingleMode
from decnn.inference.branch_mode import BranchMode
from decnn.inference.codec import make_codec
from decnn.inference.config import InferConfig
from decnn.inference.inputs import Normalize
from decnn.inference.metrics import param_bytes
from decnn.inference.optimize import prepare_for_inference
from decnn.inference.spec import ModelSpec


@dataclass
class BuiltMode:
    """The mode object (pipeline: the whole model, which ``run_pipeline`` splits itself), the bytes of
    parameters this rank holds, and the placement (branch mode)."""

    mode: BranchMode | SingleMode | DataMode | nn.Module
    param_bytes: int
    placement: list[list[int]] | None = None


def build_mode(cfg: InferConfig, comm: Communicator, spec: ModelSpec, normalize: Normalize) -> BuiltMode:
    if cfg.mode == "branch":
        placement = spec.placement(cfg.placement, comm.world_size)
        codec = make_codec(cfg.exchange_dtype)
        if cfg.backend == "onnxruntime":
            from decnn.onnx_branch import OnnxBranch

            branch = OnnxBranch(spec.checkpoint, comm.rank, threads=torch.get_num_threads())
            return BuiltMode(BranchMode(branch, comm, codec, normalize, cfg.overlap), branch.param_bytes,
                             placement.as_lists())
        branch = spec.build_branch(placement, comm.rank).to(comm.device)
        mode = BranchMode(prepare_for_inference(branch), comm, codec, normalize, cfg.overlap)
        return BuiltMode(mode, param_bytes(branch), placement.as_lists())
    model = spec.build(comm.device)
    held = param_bytes(model)
    if cfg.mode == "single":
        return BuiltMode(SingleMode(prepare_for_inference(model), normalize), held)
    if cfg.mode == "data":
        return BuiltMode(DataMode(prepare_for_inference(model), comm, normalize), held)
    return BuiltMode(model, held)
