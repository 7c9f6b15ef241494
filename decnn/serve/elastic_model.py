"""``decnn.split(..., elastic=True)``: a split that keeps answering on the devices left, and grows back.

    with decnn.split("runs/train/<run>/best.pt", devices=3, elastic=True) as model:
        logits = model(images)            # answered by whichever group of devices is up
        model.timeline.table()            # the groups, their placements and latency, each change's cause

The caller hosts a TCPStore: the devices' c10d rendezvous runs on it, and so do the requests
(:mod:`decnn.serve.requests`), so that neither is lost with a device. Each device is one node of torch's
elastic agent (:mod:`decnn.serve.device`); ``devices`` of them start here, more can join from other hosts
(``decnn device HOST:PORT --nnodes MIN:MAX``) or from :meth:`ElasticSplitModel.add_device`. A call waits
until some group answers it, re-served after a membership change, and gets exactly one answer; with no
answer within ``deadline`` seconds it raises :class:`~decnn.serve.calls.WorkerError` saying what is left.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

from decnn.common import processes
from decnn.common.errors import ConfigError, option
from decnn.common.processes import die_with_parent
from decnn.serve.calls import WorkerError, check_images
from decnn.serve.requests import CallerQueue
from decnn.serve.timeline import Answer, Timeline

__all__ = ["ElasticSplitModel", "random_checkpoint"]

_POLL_S = 0.5  # how often a waiting call looks at the devices and the deadline
_STOP_GRACE_S = 10.0


class ElasticSplitModel:
    """A running elastic split: call it with images, read :attr:`timeline`; see :mod:`decnn.serve.elastic_model`."""

    mode = "branch"

    def __init__(self, cfg, spec, devices: int, nnodes: tuple[int, int | None], endpoint: str, deadline: float):
        """``nnodes``: the fewest and most devices (None: the model's groups); ConfigError before anything starts."""
        self.nnodes, self.deadline = _check(spec, devices, nnodes, deadline), deadline
        if cfg.threads is None and devices:  # this host's cores shared by its devices (a board's: all of them)
            cfg = dataclasses.replace(cfg, threads=max(1, len(os.sched_getaffinity(0)) // devices))
        self._workdir, self._closed, self._lock = None, False, threading.Lock()
        if spec.checkpoint is None:  # a timm name: its seeded random weights, as a checkpoint every device reads
            self._workdir = tempfile.TemporaryDirectory(prefix="decnn-elastic-")
            spec = dataclasses.replace(spec, checkpoint=str(random_checkpoint(spec, Path(self._workdir.name))))
        self.spec = spec
        host, port = endpoint.rsplit(":", 1)
        self._store = dist.TCPStore(host, int(port), is_master=True, wait_for_workers=False, multi_tenant=True)
        self.endpoint = f"{host}:{self._store.port}"
        self.queue = CallerQueue(self._store)
        self.queue.publish_settings((cfg, spec))
        self.timeline = Timeline()
        self._owed: set[int] = set()
        self._last_rid = 0
        self._start = time.monotonic()
        self.timeline.start_wall = time.time()
        self.local_devices: list[subprocess.Popen] = []
        atexit.register(self.close)
        try:
            for _ in range(devices):
                self.add_device()
            self._wait_for_group()
        except BaseException:
            self.close()
            raise

    def add_device(self) -> subprocess.Popen:
        """Start one more device on this host (``device<n>``); it joins at the next rendezvous."""
        name = f"device{len(self.local_devices)}"
        argv = [sys.executable, "-m", "decnn.serve.device", self.endpoint, "--nnodes",
                f"{self.nnodes[0]}:{self.nnodes[1]}", "--name", name]
        proc = subprocess.Popen(argv, start_new_session=True, preexec_fn=die_with_parent)
        self.local_devices.append(proc)
        return proc

    def _wait_for_group(self) -> None:
        deadline = time.monotonic() + self.deadline
        while self.queue.epochs() == 0 or self.queue.group(self.queue.epochs()) is None:
            self._raise_on_error()
            if time.monotonic() > deadline:
                raise WorkerError(f"no group of devices formed within the {self.deadline:g} s deadline "
                            f"({self._devices_state()})")
            time.sleep(0.1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, classes]`` of uint8 images ``[B, 3, H, W]`` or float32 normalised inputs; thread-safe."""
        array = check_images(images, self._closed).detach().cpu().contiguous().numpy()
        submitted = time.monotonic()
        with self._lock:
            rid = self.queue.submit(array)
            self._owed.add(rid)
            self._last_rid = max(self._last_rid, rid)
        try:
            while (got := self.queue.answer(rid, _POLL_S)) is None:
                self._raise_on_error()
                if time.monotonic() - submitted > self.deadline:
                    raise WorkerError(f"no answer within the {self.deadline:g} s deadline: no group of devices "
                                      f"is serving ({self._devices_state()})")
        finally:
            with self._lock:
                self._owed.discard(rid)
                self.queue.forget(rid, min(self._owed, default=self._last_rid + 1))
        epoch, logits, service_s = got
        self._record(Answer(rid, submitted - self._start, time.monotonic() - self._start, epoch, service_s,
                            array.shape[0]))
        return torch.from_numpy(logits)

    def _record(self, answer: Answer) -> None:
        with self._lock:
            known = max(self.timeline.groups, default=0)
            for epoch in range(known + 1, answer.epoch + 1):
                self.timeline.add_group(epoch, self.queue.group(epoch), [])
            if answer.epoch > known:
                self._read_faults(answer.epoch)
            self.timeline.answers.append(answer)

    def _read_faults(self, before: int) -> None:
        """What ended each group before epoch ``before``, where its ranks recorded it (once read, kept)."""
        for epoch, group in self.timeline.groups.items():
            if epoch < before and epoch not in self.timeline.faults:
                self.timeline.add_group(epoch, None, self.queue.faults(epoch, len(group["devices"])))

    def _raise_on_error(self) -> None:
        message = self.queue.error()
        if message:
            self.close()
            raise WorkerError(f"a device cannot serve this model: {message}; the split model is closed")

    def _devices_state(self) -> str:
        local = [f"device{i} {'running' if p.poll() is None else f'exited ({p.returncode})'}"
                 for i, p in enumerate(self.local_devices)]
        where = f"devices here: {', '.join(local)}" if local else "no device here"
        return f"{where}; others join with `decnn device {self.endpoint} --nnodes {self.nnodes[0]}:{self.nnodes[1]}`"

    def stats(self) -> list[dict]:
        """Per device of the newest group: rank, device name, host, pid, parameter bytes and peak RSS."""
        group = self.queue.group(self.queue.epochs())
        return group["devices"] if group else []

    def close(self) -> None:
        """Tell the devices the service is closed, wait for this host's to leave (idempotent)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        with self._lock:
            self._read_faults(max(self.timeline.groups, default=0) + 1)  # a rank may have recorded one late
        self.queue.close()
        deadline = time.monotonic() + _STOP_GRACE_S
        group = self.queue.group(self.queue.epochs()) or {"devices": []}
        while self.queue.left() < len(group["devices"]) and time.monotonic() < deadline:
            time.sleep(0.05)  # the store stays up until the devices' agents have finished with it
        for proc in self.local_devices:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its agent and worker, whatever state they are in
            except ProcessLookupError:
                pass
            proc.wait()
            while processes.group_alive(proc.pid) and time.monotonic() < deadline + _STOP_GRACE_S:
                time.sleep(0.05)
        if self._workdir is not None:
            self._workdir.cleanup()

    def __enter__(self) -> ElasticSplitModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check(spec, devices: int, nnodes: tuple[int, int | None], deadline: float) -> tuple[int, int]:
    low, high = nnodes[0], nnodes[1] or spec.groups
    if not 1 <= low <= high <= spec.groups or not 0 <= devices <= high:
        raise ConfigError(f"{option('min_devices', low)}, {option('max_devices', high)}, {option('devices', devices)}: "
                          f"an elastic split of {spec.groups} groups needs 1 <= min devices <= max devices <= "
                          f"{spec.groups}, and at most max devices started here")
    if deadline <= 0:
        raise ConfigError(f"{option('deadline', deadline)}: give the seconds a call may wait for an answer, "
                          f"e.g. {option('deadline', 120)}")
    return low, high


def random_checkpoint(spec, folder: Path) -> Path:
    """The spec's seeded random model as a checkpoint in ``folder``: what every device re-slices its branch from."""
    from decnn.common.checkpoint import save_checkpoint

    path = folder / "random-init.pt"
    save_checkpoint(path, {"model": spec.build().state_dict(), "model_name": spec.name,
                           "model_kwargs": spec.kwargs, "config": {"data": {"image_size": spec.input_size}}})
    return path
