"""One device's part of an exported split, read without torch: its ONNX graphs, exchange plans and the facts
of the model (classes, input normalisation) from the manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from decnn.wire.export_format import WHOLE_MODEL, BundleError, read_manifest, read_plans, split_mode


def session(path: Path, threads: int):
    """An ONNX Runtime session of ``threads`` threads on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # No memory pattern: it plans one block per input shape for the whole graph; without it a device's peak
    # RSS measured 118 against 121 MiB at batch 1 and 193 against 224 MiB at batch 8 (ResNet-34 G4 x1.5, 1 of 2).
    options.enable_mem_pattern = False
    # One arena for all of a device's sessions (its segments, head and tail), as one graph has: with an arena
    # each, a device's peak RSS at batch 8 measured 196 MiB, with one 171 MiB (ResNet-34 G4 x1.5, 1 of 2).
    options.add_session_config_entry("session.use_env_allocators", "1")
    _shared_arena(ort)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a missing or broken graph
        raise BundleError(f"{path}: {str(e).splitlines()[0][:200]}") from None


_ARENA: list = []


def _shared_arena(ort) -> None:
    """Register once per process the CPU arena that sessions with ``session.use_env_allocators`` share."""
    if not _ARENA:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
        _ARENA.append(info)


class Graph:
    """One graph: ``graph(x)`` for one input and one output, ``graph.run(inputs)`` for several."""

    def __init__(self, path: Path, threads: int):
        self.session = session(path, threads)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"x": x})[0]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, {n: np.ascontiguousarray(x) for n, x in zip(self.inputs, inputs)})


class DeviceBundle:
    """Device ``device``'s graphs (segments, head, device 0's tail) and exchange plans from ``directory``."""

    def __init__(self, directory: str | Path, device: int, threads: int = 1):
        directory = Path(directory)
        manifest = read_manifest(directory)
        self.manifest, self.device = manifest, device
        if split_mode(manifest) != "branch":
            raise BundleError(f"{directory} holds a {split_mode(manifest)} split, not DeCNN's branches")
        self.placement: list[list[int]] = manifest["placement"]
        if not 0 <= device < len(self.placement):
            raise BundleError(f"{directory} was exported for {len(self.placement)} devices "
                              f"(placement {_spec(self.placement)}); there is no device {device}")
        if not manifest.get("onnx"):
            raise BundleError(f"{directory} has no ONNX graphs: export with `decnn export CHECKPOINT --onnx ...`")
        self.plans = read_plans(directory, manifest, device)
        names = manifest["onnx"][device]
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise BundleError(f"{directory} lacks device {device}'s {', '.join(missing)}: copy them there")
        graphs = [Graph(directory / n, threads) for n in names]
        self.segments = [g for g, n in zip(graphs, names) if ".seg" in n]
        self.head = graphs[len(self.segments)]
        self.tail = graphs[-1] if names[-1].endswith(".tail.onnx") else None
        self.param_bytes: int = manifest["devices"][device]["param_bytes"]


def whole_model(directory: str | Path, threads: int = 1) -> Graph:
    """The whole model's graph (``model.onnx``) of an export."""
    path = Path(directory) / WHOLE_MODEL
    if not path.is_file():
        raise BundleError(f"{directory} has no {WHOLE_MODEL}: export with `decnn export CHECKPOINT --onnx ...`")
    return Graph(path, threads)


def _spec(placement: list[list[int]]) -> str:
    return "/".join(",".join(map(str, dev)) for dev in placement)
