"""Checkpoints: atomic saves, safe loads (``weights_only``), and rebuilding the model a checkpoint holds.

A checkpoint is a dict of plain types and tensors::

    model         the model's state_dict
    model_name    timm name, e.g. "decnn_resnet34"
    model_kwargs  timm.create_model kwargs, num_classes included
    config        the resolved training config (TrainingConfig.to_dict())
    optimizer, scheduler, scaler   their state_dicts
    epoch         epochs completed
    best_top1, best_top5           val accuracy (%) of the best epoch so far
    rng           per rank: {"python", "numpy", "torch", "cuda"} generator states
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

from decnn.common.processes import pid_alive

REQUIRED_KEYS = ("model", "model_name", "model_kwargs")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here: unreadable, or for another architecture."""


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: a reader sees the old file or the new one, never a torn one."""
    path = Path(path)
    _remove_orphans(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _remove_orphans(path: Path) -> None:
    """Delete the temporary files of saves to ``path`` whose writer died before it could (SIGKILL, power loss):
    each is as large as a checkpoint. A live writer's file is kept."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)



def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint onto the CPU without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message goes on to suggest weights_only=False, which would run any code the file holds.
        raise CheckpointError(f"{path} holds objects other than tensors and plain types (possibly code), "
                              "which decnn refuses to load; decnn's checkpoints come from train.py") from None
    except Exception:
        raise CheckpointError(f"{path} is truncated or corrupt: not a readable torch checkpoint "
                              "(e.g. runs/train/<run>/last.pt written by train.py)") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a decnn checkpoint (missing {', '.join(missing)})")
    return ckpt


def normalization_kwargs(name: str, mean, std) -> dict:
    """``create_model`` arguments that make model ``name``'s pretrained_cfg say ``mean`` and ``std`` (none
    where it already does)."""
    default = timm.models.get_pretrained_cfg(name)
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if default is not None and (mean, std) == (list(default.mean), list(default.std)):
        return {}
    return {"pretrained_cfg_overlay": {"mean": mean, "std": std}}


def check_architecture(ckpt: dict, name: str, kwargs: dict | None = None, where: str = "checkpoint") -> None:
    """Raise CheckpointError unless ``ckpt`` holds model ``name`` built with ``kwargs`` (when given); the
    input normalisation a checkpoint records (``pretrained_cfg_overlay``) is not architecture."""
    if ckpt["model_name"] != name:
        raise CheckpointError(f"{where} holds a {ckpt['model_name']} model, but the config asks for {name}")
    saved = {k: v for k, v in ckpt["model_kwargs"].items() if k != "pretrained_cfg_overlay"}
    kwargs = kwargs and {k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"}
    if kwargs is not None and saved != kwargs:
        diff = {k: (saved.get(k), kwargs.get(k)) for k in {*saved, *kwargs}}
        diff = ", ".join(f"{k}: {a!r} in checkpoint, {b!r} in config" for k, (a, b) in sorted(diff.items()) if a != b)
        raise CheckpointError(f"{where} holds a {name} of another architecture ({diff})")


def load_weights(model: nn.Module, state_dict: dict, where: str = "checkpoint", assign: bool = False) -> None:
    """``model.load_state_dict`` with a CheckpointError naming the mismatching keys (``assign``: take the
    tensors themselves, e.g. into a ``meta`` skeleton, instead of copying them)."""
    own = model.state_dict()
    missing = sorted(own.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - own.keys())
    reshaped = sorted(k for k in own.keys() & state_dict.keys() if own[k].shape != state_dict[k].shape)
    if missing or unexpected or reshaped:
        parts = [f"{label}: {_few(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("other shape", reshaped)) if keys]
        raise CheckpointError(f"{where} does not fit the model ({'; '.join(parts)})")
    model.load_state_dict(state_dict, assign=assign)


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_model(path: str | Path, expected_name: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint holds (``timm.create_model(model_name, **model_kwargs)``) in eval mode."""
    ckpt = load_checkpoint(path)
    if expected_name is not None:
        check_architecture(ckpt, expected_name, where=str(path))
    model = timm.create_model(ckpt["model_name"], **ckpt["model_kwargs"])
    load_weights(model, ckpt["model"], where=str(path))
    return model.eval(), ckpt


def rng_state() -> dict:
    """Every generator a training step may draw from, as tensors and plain types (``weights_only``-safe)."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": list(random.getstate()),
        "numpy": {**np_state, "state": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                                        "pos": np_state["state"]["pos"]}},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    key = np_state["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state({**np_state, "state": {"key": key, "pos": np_state["state"]["pos"]}})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
