"""``decnn.split``: a split model to call from your own code, served by persistent worker processes.

    import decnn
    with decnn.split("runs/train/<run>/best.pt", devices=2) as model:
        logits = model(images)          # uint8 [B, 3, H, W] images, or float32 normalised inputs

The caller's process is a thin client: it checks the settings, starts the workers through torch's elastic
launcher (on a background thread that supervises them) and talks to rank 0 through a pipe. The workers keep
their branch (or pipeline stage) between calls. :meth:`SplitModel.close` — also run on leaving the
``with`` block, on an exception, on Ctrl-C and at interpreter exit — stops them and waits until they are
gone; a worker that dies makes the next call raise :class:`WorkerError` and the others are stopped.
"""

from __future__ import annotations

import atexit
import dataclasses
import inspect
import multiprocessing
import os
import signal
import socket
import threading
from pathlib import Path

import timm
import torch
from torch import nn

from decnn.common.errors import ConfigError, python_syntax
from decnn.deploy.shards import read_manifest
from decnn.distributed.launcher import launch
from decnn.distributed.process import LOCAL_ENDPOINT, check_main_reimportable
from decnn.inference.settings import InferConfig
from decnn.inference.spec import ModelSpec, describe, resolve_model
from decnn.serve import worker
from decnn.serve.calls import WorkerError, check_images

__all__ = ["SplitModel", "split"]

SPLIT_MODES = ("branch", "modnn", "grid", "pipeline")
MODEL_KEYWORDS = ("groups", "width", "stem")  # settings of the model a timm name or checkpoint source builds
_STOP_GRACE_S = 10.0  # for the workers to finish a step in flight and leave on their own




def split(
    source: str | Path | nn.Module,
    devices: int = 2,
    mode: str = "branch",
    placement: str | None = None,
    exchange_dtype: str = "fp32",
    overlap: int = 1,
    *,
    backend: str = "torch",
    threads: int | None = None,
    timeout: float = 60.0,
    nnodes: int = 1,
    rdzv_endpoint: str = LOCAL_ENDPOINT,
    seed: int = 0,
    elastic: bool = False,
    min_devices: int = 1,
    max_devices: int | None = None,
    deadline: float = 120.0,
    **model_kwargs,
) -> SplitModel:
    """Start a split model on ``devices`` worker processes (per host, of ``nnodes``) and return it.

    ``source``: a checkpoint file, a folder of shards from ``decnn export``, a DeCNN ``nn.Module``, or a
    timm name (random weights from ``seed``; ``model_kwargs``: ``groups``, ``width``, ``stem``, which a
    checkpoint's model must match).
    ``mode``: ``"branch"`` (DeCNN: each device runs its channel groups), ``"modnn"`` or ``"grid"`` (the
    peers' spatial splits: each device computes a band or tile of every feature map, with all the
    weights) or ``"pipeline"`` (layer-wise stages). ``placement``: groups per device, e.g. ``"0,1,2/3"``
    (default: even, or the shards').
    ``overlap``: branch mode, slices of a batch in flight; pipeline mode, micro-batches per batch.
    ``backend="onnxruntime"``: the branches run as ONNX graphs (a shard folder exported with ``--onnx``);
    torch.distributed still exchanges the activations. ``backend="edge"``: the device runtime serves the
    same folder, ONNX Runtime computing and MPI exchanging, with no torch in the devices' processes
    (:mod:`decnn.edge`; ``devices`` must be the export's, ``mode`` branch).
    ``elastic=True``: each device is one node of torch's elastic agent and the split survives a lost device:
    the devices left re-place the groups (any count from ``min_devices`` to ``max_devices``, default the
    model's groups) and answer the calls in flight, a device that returns grows the group back; ``devices``
    start on this host, others join with ``decnn device HOST:PORT`` at ``rdzv_endpoint``; a call with no
    answer within ``deadline`` seconds raises WorkerError (:mod:`decnn.serve.elastic_model`).
    Bad settings raise :class:`ConfigError` (an unknown keyword TypeError) before any process starts, naming
    settings as Python keywords.
    """
    _check_keywords(source, model_kwargs)
    if elastic:
        return _elastic_split(source, devices, mode, placement, exchange_dtype, overlap, backend, threads, timeout,
                              rdzv_endpoint, seed, (min_devices, max_devices), deadline, model_kwargs)
    check_main_reimportable("decnn.split")
    if backend == "edge":
        return _edge_split(source, devices, mode, placement, exchange_dtype, overlap, threads, timeout, model_kwargs)
    with python_syntax():
        cfg, spec = _resolve(source, model_kwargs, dict(
            mode=mode, devices=devices, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint, placement=placement,
            exchange_dtype=exchange_dtype, backend=backend, overlap=overlap, threads=threads, timeout=timeout,
            seed=seed, batch=overlap, warmup=0, log_dir=None))  # batch: checked to split into overlap
    return SplitModel(cfg, spec)


def _check_keywords(source, model_kwargs: dict) -> None:
    """An unknown keyword is a TypeError naming the valid ones (a typo must not run other settings)."""
    is_module = isinstance(source, nn.Module)
    unknown = sorted(model_kwargs) if is_module else sorted(set(model_kwargs) - set(MODEL_KEYWORDS))
    if unknown:
        valid = [name for name in inspect.signature(split).parameters if name not in ("source", "model_kwargs")]
        model = ("; an nn.Module source is built already, so groups, width and stem do not apply" if is_module
                 else f", and for the model {', '.join(MODEL_KEYWORDS)}")
        raise TypeError(f"decnn.split() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
                        f"valid: {', '.join(valid)}{model}")


def _resolve(source, model_kwargs: dict, common: dict) -> tuple[InferConfig, ModelSpec]:
    """The checked settings and the model of a split, from ``split``'s arguments (``common``)."""
    mode, placement, backend = common["mode"], common["placement"], common["backend"]
    if mode not in SPLIT_MODES:
        raise ConfigError(f"mode {mode!r}: a split model runs mode {', '.join(map(repr, SPLIT_MODES))}, "
                          'e.g. mode="branch"')
    module = source if isinstance(source, nn.Module) else None
    if module is not None:
        cfg = InferConfig(random_init=True, **common).check()
        spec = describe(module, cfg, type(module).__name__, {}, module=module.eval())
    elif Path(source).exists():
        cfg = InferConfig(checkpoint=str(source), **common, **model_kwargs).check()
        spec = resolve_model(cfg)
    elif str(source) in timm.list_models():
        cfg = InferConfig(random_init=True, model=str(source), **common, **model_kwargs).check()
        spec = resolve_model(cfg)
    else:
        raise ConfigError(f"{source!r} is neither a checkpoint, a shard folder nor a timm model name; "
                          "e.g. decnn.split('runs/train/<run>/best.pt', devices=2)")
    if mode == "branch":
        spec.placement(placement, cfg.world_size)  # a bad placement or missing shard fails here
    if backend == "onnxruntime" and (spec.exported_placement is None or not read_manifest(source).get("onnx")):
        raise ConfigError(f"backend='onnxruntime' needs a shard folder with ONNX graphs, not {source!r}: "
                          "export one with `decnn export CHECKPOINT --devices N --out DIR --onnx`")
    return cfg, spec


def _elastic_split(source, devices, mode, placement, exchange_dtype, overlap, backend, threads, timeout, endpoint,
                   seed, bounds, deadline, model_kwargs):
    from decnn.serve.elastic_model import ElasticSplitModel

    example = "e.g. decnn.split('runs/train/<run>/best.pt', devices=3, elastic=True)"
    if mode != "branch" or placement is not None or backend != "torch":
        raise ConfigError(f"elastic=True runs mode='branch' with backend='torch' and re-places the groups itself "
                          f"whenever the devices change (no placement); {example}")
    if isinstance(source, nn.Module) or Path(str(source)).is_dir():
        raise ConfigError(f"elastic=True needs a checkpoint file (or a timm name), which every device re-slices "
                          f"its branch from when the devices change; a shard folder or a module holds one "
                          f"placement only; {example}")
    with python_syntax():
        cfg, spec = _resolve(source, model_kwargs, dict(
            mode="branch", devices=None, nnodes=1, rdzv_endpoint=LOCAL_ENDPOINT, placement=None,
            exchange_dtype=exchange_dtype, backend="torch", overlap=overlap, timeout=timeout, seed=seed,
            batch=overlap, warmup=0, log_dir=None, threads=threads))
        return ElasticSplitModel(cfg, spec, devices, bounds, endpoint, deadline)


def _edge_split(source, devices, mode, placement, exchange_dtype, overlap, threads, timeout, model_kwargs):
    from decnn.edge.service import EdgeService, ServiceError
    from decnn.wire.export_format import BundleError

    example = "e.g. decnn.split('shards/', devices=2, backend='edge')"
    if mode != "branch" or placement is not None or model_kwargs or isinstance(source, nn.Module):
        raise ConfigError(f"backend='edge' runs the branches of a folder from `decnn export --onnx` as exported "
                          f"(mode='branch', no placement or model arguments); {example}")
    try:
        return EdgeSplitModel(EdgeService(source, devices, exchange_dtype, overlap, threads, timeout))
    except BundleError as e:
        raise ConfigError(str(e)) from None
    except ServiceError as e:
        raise WorkerError(str(e)) from None


class EdgeSplitModel:
    """A split served by the device runtime (:class:`decnn.edge.service.EdgeService`), with the interface of
    :class:`SplitModel`: torch tensors in and out."""

    mode = "branch"

    def __init__(self, service):
        self.service, self.workers = service, service.workers

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from decnn.edge.service import ServiceError

        array = check_images(images, self.service.closed).detach().cpu().contiguous().numpy()
        try:
            return torch.from_numpy(self.service(array))
        except ServiceError as e:
            raise WorkerError(str(e)) from None

    def stats(self) -> list[dict]:
        return self.service.stats()

    def close(self) -> None:
        self.service.close()

    def __enter__(self) -> EdgeSplitModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SplitModel:
    """A running split model: call it with a batch of images to get the logits (see :func:`split`)."""

    def __init__(self, cfg: InferConfig, spec: ModelSpec):
        self.spec, self.mode = spec, cfg.mode
        self._closed, self._failure = False, None
        self._conn, child = multiprocessing.get_context("forkserver").Pipe()
        worker_cfg = dataclasses.replace(cfg, devices=None)  # the workers learn their number from the launcher
        self._thread = threading.Thread(
            target=self._supervise, args=(worker_cfg, spec, child, cfg.devices, cfg.nnodes, cfg.rdzv_endpoint),
            name="decnn-split-launcher", daemon=True,
        )
        atexit.register(self.close)
        self._thread.start()
        try:
            self.workers: list[dict] = self._receive()  # per rank: host, pid, param_bytes, peak_rss_bytes
        except BaseException:
            self.close()
            raise
        finally:
            child.close()  # every worker holds its copy now; rank 0's is the only one left open

    def _supervise(self, cfg: InferConfig, spec: ModelSpec, child, devices: int, nnodes: int, endpoint: str) -> None:
        try:
            launch(worker.serve, (cfg, spec, child), devices, nnodes=nnodes, rdzv_endpoint=endpoint)
        except BaseException as e:  # reported by the caller's next request
            self._failure = e

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, classes]`` of uint8 images ``[B, 3, H, W]`` (0..255) or float32 normalised inputs."""
        array = check_images(images, self._closed).detach().cpu().contiguous().numpy()
        return torch.from_numpy(self._request(worker.RUN, array))

    def stats(self) -> list[dict]:
        """Per rank, now: host, pid, parameter bytes held and peak RSS."""
        return self._request(worker.STATS)

    def _request(self, op: int, array=None):
        if self._closed:
            raise WorkerError("this split model is closed; start a new one with decnn.split(...)")
        try:
            self._conn.send((op, array))
        except OSError:
            pass  # rank 0 is gone: _receive says why
        return self._receive()

    def _receive(self):
        """Rank 0's answer; if the workers fail instead, close and raise WorkerError naming the cause."""
        try:
            while not self._conn.poll(0.05):
                if not self._thread.is_alive():
                    raise EOFError
            status, payload = self._conn.recv()
        except (EOFError, OSError):
            self._thread.join(_STOP_GRACE_S)
            self.close()
            cause = self._failure or "the workers exited"
            raise WorkerError(f"the split model's workers failed: {cause}; the split model is closed") from None
        if status == "error":
            self.close()
            raise WorkerError(f"the split model's workers could not start: {payload}")
        return payload

    def close(self) -> None:
        """Stop the workers and wait until they are gone (idempotent)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            self._conn.send((worker.STOP, None))
        except OSError:
            pass
        self._thread.join(_STOP_GRACE_S)
        if self._thread.is_alive():  # a worker stuck in a step: end this host's workers, the launcher notices
            for info in getattr(self, "workers", []):
                if info["host"] == socket.gethostname():
                    _kill(info["pid"])
            self._thread.join()
        self._conn.close()

    def __enter__(self) -> SplitModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
