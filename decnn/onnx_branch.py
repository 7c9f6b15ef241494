"""A device's branch run by ONNX Runtime from the graphs of ``decnn export --onnx``.

:class:`OnnxBranch` has the interface of :class:`decnn.partition.Branch` that drivers use (``segment``,
``head``, ``plans``), so the reference exchange (``run_branches_locally``) drives it unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch

from decnn.partition import ExchangePlan
from decnn.shards import read_manifest, shard_file


class OnnxBranch:
    """Device ``device``'s segments and head as ONNX Runtime sessions of ``threads`` threads each."""

    def __init__(self, directory: str | Path, device: int, threads: int = 1):
        import onnxruntime as ort

        manifest = read_manifest(directory)
        if not manifest.get("onnx"):
            raise FileNotFoundError(f"{directory} has no ONNX graphs: export with `decnn export ... --onnx`")
        shard = torch.load(shard_file(directory, device), map_location="cpu", mmap=True, weights_only=True)
        self.plans = [ExchangePlan(**plan) for plan in shard["plans"]]
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.sessions = [ort.InferenceSession(str(Path(directory) / name), options, providers=["CPUExecutionProvider"])
                         for name in manifest["onnx"][device]]
        self.segments = self.sessions[:-1]
        self.param_bytes = manifest["devices"][device]["param_bytes"]

    @property
    def num_shuffles(self) -> int:
        return len(self.plans)

    def _run(self, session, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"x": x.contiguous().numpy()})[0])

    def segment(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.segments[i], x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.sessions[-1], x)
