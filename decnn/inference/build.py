"""A rank's set-up, shared by the benchmark runner and the persistent workers of ``decnn.split``.

From the spec, the rank builds only what its mode needs (branch mode: its branch alone, from shards or a
memory-mapped checkpoint, or its ONNX graphs with ``backend="onnxruntime"``; the spatial modes and the
baselines: the whole model) and wraps it in the mode object whose ``step`` runs a batch across the ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decnn.distributed.communicator import Communicator
from decnn.inference.baselines import DataMode, SingleMode
from decnn.inference.branch_mode import BranchMode
from decnn.inference.inputs import Normalize
from decnn.inference.metrics import param_bytes
from decnn.inference.mode import Mode
from decnn.inference.optimize import prepare_for_inference
from decnn.inference.pipeline_mode import PipelineMode
from decnn.inference.settings import InferConfig
from decnn.inference.spatial_mode import SpatialMode
from decnn.inference.spec import ModelSpec
from decnn.inference.tensor_codecs import make_codec
from decnn.wire.spatial import SPATIAL_MODES


@dataclass
class BuiltMode:
    """The mode object, the bytes of parameters this rank holds, and the placement (branch mode)."""

    mode: Mode
    param_bytes: int
    placement: list[list[int]] | None = None


def build_mode(cfg: InferConfig, comm: Communicator, spec: ModelSpec, normalize: Normalize,
               image_size: int) -> BuiltMode:
    """This rank's mode, its module prepared for inference exactly as every other mode's is."""
    if cfg.mode == "branch":
        placement = spec.placement(cfg.placement, comm.world_size)
        codec = make_codec(cfg.exchange_dtype)
        if cfg.backend == "onnxruntime":
            from decnn.deploy.onnx_branch import OnnxBranch

            branch = OnnxBranch(spec.checkpoint, comm.rank, threads=torch.get_num_threads())
            return BuiltMode(BranchMode(branch, comm, codec, normalize, cfg.overlap, cfg.check_exchange),
                             branch.param_bytes,
                             placement.as_lists())
        branch = prepare_for_inference(spec.build_branch(placement, comm.rank).to(comm.device))
        mode = BranchMode(branch, comm, codec, normalize, cfg.overlap, cfg.check_exchange)
        return BuiltMode(mode, param_bytes(branch), placement.as_lists())
    if cfg.mode in SPATIAL_MODES:  # every rank holds the whole model: the method's memory cost
        model = spec.build(comm.device)
        held = param_bytes(model)
        return BuiltMode(SpatialMode(model, comm, normalize, cfg.tiling(comm.world_size), image_size), held)
    model = prepare_for_inference(spec.build(comm.device))
    if cfg.mode == "single":
        return BuiltMode(SingleMode(model, normalize), param_bytes(model))
    if cfg.mode == "data":
        return BuiltMode(DataMode(model, comm, normalize), param_bytes(model))
    micro = max(cfg.batch // cfg.overlap, 1)
    mode = PipelineMode(model, comm, normalize, cfg.overlap, (micro, 3, image_size, image_size))
    return BuiltMode(mode, param_bytes(mode.module))  # this rank's stage, not the whole model
