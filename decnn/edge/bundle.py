"""One device's part of an exported split, read without torch: its ONNX graphs, exchange plans and the facts
of the model (classes, input normalisation) from the manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
FORMAT = "decnn-shards/1"
WHOLE_MODEL = "model.onnx"  # the whole model as one graph: the 1-device baseline, the reference of --verify


class BundleError(ValueError):
    """A folder that is not a device's export, or belongs to another export, device or placement."""


def plans_file(directory: str | Path, device: int) -> Path:
    """Device ``device``'s exchange plans as JSON."""
    return Path(directory) / f"device{device}.plans.json"


def split_mode(manifest: dict) -> str:
    """How an export splits the model: ``branch`` (DeCNN's groups), ``modnn`` or ``grid`` (spatial)."""
    return manifest.get("mode", "branch")


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"{directory} is not a shard folder written by `decnn export` ({e})") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


@dataclass(frozen=True)
class Plan:
    """Device ``device``'s part of the all-to-all at one shuffle point (see decnn.partition.exchange)."""

    device: int
    send_index: np.ndarray
    send_splits: list[int]
    recv_splits: list[int]
    recv_index: np.ndarray


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
        self.plans = self._plans(directory)
        names = manifest["onnx"][device]
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise BundleError(f"{directory} lacks device {device}'s {', '.join(missing)}: copy them there")
        graphs = [Graph(directory / n, threads) for n in names]
        self.segments = [g for g, n in zip(graphs, names) if ".seg" in n]
        self.head = graphs[len(self.segments)]
        self.tail = graphs[-1] if names[-1].endswith(".tail.onnx") else None
        self.param_bytes: int = manifest["devices"][device]["param_bytes"]

    def _plans(self, directory: Path) -> list[Plan]:
        path = plans_file(directory, self.device)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise BundleError(f"{path} cannot be read ({e}): copy it from the export, or export again") from None
        expected = {"export_id": self.manifest["export_id"], "device": self.device, "placement": self.placement}
        wrong = [f"{k}={data.get(k)!r}, expected {v!r}" for k, v in expected.items() if data.get(k) != v]
        if wrong:
            raise BundleError(f"{path} belongs to another export ({'; '.join(wrong)}): export the folder again")
        return [Plan(device=p["device"], send_index=np.asarray(p["send_index"], np.int64),
                     send_splits=p["send_splits"], recv_splits=p["recv_splits"],
                     recv_index=np.asarray(p["recv_index"], np.int64)) for p in data["plans"]]


def whole_model(directory: str | Path, threads: int = 1) -> Graph:
    """The whole model's graph (``model.onnx``) of an export."""
    path = Path(directory) / WHOLE_MODEL
    if not path.is_file():
        raise BundleError(f"{directory} has no {WHOLE_MODEL}: export with `decnn export CHECKPOINT --onnx ...`")
    return Graph(path, threads)


def _spec(placement: list[list[int]]) -> str:
    return "/".join(",".join(map(str, dev)) for dev in placement)
