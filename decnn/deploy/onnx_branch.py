"""A device's branch run by ONNX Runtime from the graphs of ``decnn export --onnx``.

:class:`OnnxBranch` has the interface of :class:`decnn.partition.Branch` that drivers use (``segment``,
``head``, ``finish``, ``plans``), so the reference exchange (``run_branches_locally``) drives it unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch

from decnn.deploy.shards import read_manifest, shard_file
from decnn.wire.exchange import ShufflePlan


class OnnxBranch:
    """Device ``device``'s segments and head as ONNX Runtime sessions of ``threads`` threads each: the graphs
    the manifest lists for it, or ``graphs`` (file names in the folder, in the same order)."""

    def __init__(self, directory: str | Path, device: int, threads: int = 1, graphs: list[str] | None = None):
        import onnxruntime as ort

        manifest = read_manifest(directory)
        if not manifest.get("onnx"):
            raise FileNotFoundError(f"{directory} has no ONNX graphs: export with `decnn export ... --onnx`")
        shard = torch.load(shard_file(directory, device), map_location="cpu", mmap=True, weights_only=True)
        self.plans = [ShufflePlan.from_dict(plan) for plan in shard["plans"]]
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        names = graphs or manifest["onnx"][device]
        self.sessions = [ort.InferenceSession(str(Path(directory) / name), options, providers=["CPUExecutionProvider"])
                         for name in names]
        self.segments = [s for s, name in zip(self.sessions, names) if ".seg" in name]
        self._head = self.sessions[len(self.segments)]
        self._tail = self.sessions[-1] if names[-1].endswith(".tail.onnx") else None
        self.param_bytes = manifest["devices"][device]["param_bytes"]

    @property
    def num_shuffles(self) -> int:
        return len(self.plans)

    def _run(self, session, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"x": x.contiguous().numpy()})[0])

    def segment(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.segments[i], x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self._head, x)

    def finish(self, summed: torch.Tensor) -> torch.Tensor:
        """The logits from the sum of all branches' head outputs (device 0 only, as for a Branch)."""
        if self._tail is None:
            raise RuntimeError("only device 0's branch holds the head's tail: reduce the partial products there")
        return self._run(self._tail, summed)
