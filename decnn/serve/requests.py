"""An elastic split's requests and answers, kept in the caller's TCPStore so that they outlive every device.

The caller hosts the store (the same one the devices' c10d rendezvous runs on) and is the only authority on
what is still owed: it hands out ids, and takes each answer once. A group of devices serves the requests in
id order from the lowest one still owed, so a group formed after a membership change re-serves the calls the
lost group had in flight; an answer written twice is taken once. Keys, under ``decnn/serve/``:

    settings        the run's settings and model spec (pickled), written by the caller before any device starts
    next            ids handed out (a counter)          req/<id>     a request (pickled numpy array)
    first           the lowest id still owed             ans/<id>     its answer (epoch, logits, seconds)
    epoch           groups formed (a counter)            group/<e>    a group's devices and placement (JSON)
    fault/<e>/<r>   what ended group e, as rank r saw it (JSON)  closed  the caller closed the service
    error           a device could not build its branch (the caller raises it and closes)
    left            devices that left after the caller closed (a counter: the caller keeps the store up till then)
"""

from __future__ import annotations

import json
import pickle
import time
from datetime import timedelta

import numpy as np
import torch.distributed as dist

from decnn.serve.worker import IDLE, RUN, STOP

__all__ = ["CallerQueue", "GroupChannel", "connect"]

PREFIX = "decnn/serve/"
_POLL_S = 0.001


def connect(endpoint: str, timeout_s: float) -> dist.TCPStore:
    """A client of the caller's store at ``HOST:PORT``."""
    host, port = endpoint.rsplit(":", 1)
    return dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=timeout_s))


def _key(*parts) -> str:
    return PREFIX + "/".join(map(str, parts))


class CallerQueue:
    """The caller's side: settings, requests out, answers in, the groups and their faults."""

    def __init__(self, store: dist.TCPStore):
        self.store = store

    def publish_settings(self, settings) -> None:
        self.store.set(_key("settings"), pickle.dumps(settings))

    def submit(self, array: np.ndarray) -> int:
        rid = self.store.add(_key("next"), 1)
        self.store.set(_key("req", rid), pickle.dumps(array))
        return rid

    def answer(self, rid: int, wait_s: float):
        """``(epoch, logits, service seconds)`` of request ``rid``, or None if it has none after ``wait_s``.

        Polls: a store ``wait`` that times out logs a C++ warning each time, which the caller's process
        (the user's) cannot silence."""
        key, end = _key("ans", rid), time.monotonic() + wait_s
        while not self.store.check([key]):
            if time.monotonic() > end:
                return None
            time.sleep(_POLL_S)
        return pickle.loads(self.store.get(key))

    def forget(self, rid: int, first_owed: int) -> None:
        """Request ``rid`` is answered or abandoned; ``first_owed`` is the lowest id still owed (set first, so
        that a group never waits for a request that is gone)."""
        self.store.set(_key("first"), str(first_owed))
        self.store.delete_key(_key("req", rid))
        self.store.delete_key(_key("ans", rid))

    def epochs(self) -> int:
        return self.store.add(_key("epoch"), 0)

    def group(self, epoch: int) -> dict | None:
        key = _key("group", epoch)
        return json.loads(self.store.get(key)) if self.store.check([key]) else None

    def faults(self, epoch: int, world_size: int) -> list[dict]:
        keys = [_key("fault", epoch, r) for r in range(world_size)]
        return [json.loads(self.store.get(k)) for k in keys if self.store.check([k])]

    def error(self) -> str | None:
        key = _key("error")
        return self.store.get(key).decode() if self.store.check([key]) else None

    def close(self) -> None:
        self.store.set(_key("closed"), "1")

    def left(self) -> int:
        return self.store.add(_key("left"), 0)


class GroupChannel:
    """A group's rank 0 side, with the interface of the pipe :class:`~decnn.serve.worker.Worker` serves:
    ``recv()`` the next request (IDLE after ``idle_s`` without one, STOP once the caller closed),
    ``send()`` its answer."""

    def __init__(self, store: dist.TCPStore, epoch: int, idle_s: float):
        self.store, self.epoch, self.idle_s = store, epoch, idle_s
        self.rid = self._first_owed()
        self.started = 0.0

    def _first_owed(self) -> int:
        key = _key("first")
        return int(self.store.get(key)) if self.store.check([key]) else 1

    def recv(self):
        try:
            self.store.wait([_key("req", self.rid)], timedelta(seconds=self.idle_s))
        except dist.DistStoreError:
            if self.store.check([_key("closed")]):
                return STOP, None
            self.rid = max(self.rid, self._first_owed())  # the caller may have abandoned the one awaited
            return IDLE, None
        self.started = time.perf_counter()
        return RUN, pickle.loads(self.store.get(_key("req", self.rid)))

    def send(self, message) -> None:
        _status, logits = message
        if self.store.check([_key("req", self.rid)]):  # not taken meanwhile from a lost group's answer
            answer = (self.epoch, logits, time.perf_counter() - self.started)
            self.store.set(_key("ans", self.rid), pickle.dumps(answer))
        self.rid += 1

    @staticmethod
    def settings(store: dist.TCPStore):
        return pickle.loads(store.get(_key("settings")))

    @staticmethod
    def closed(store: dist.TCPStore) -> bool:
        return store.check([_key("closed")])

    @staticmethod
    def leave(store: dist.TCPStore) -> None:
        store.add(_key("left"), 1)

    @staticmethod
    def new_epoch(store: dist.TCPStore) -> int:
        return store.add(_key("epoch"), 1)

    @staticmethod
    def announce(store: dist.TCPStore, epoch: int, group: dict) -> None:
        store.set(_key("group", epoch), json.dumps(group))

    @staticmethod
    def record_error(store: dist.TCPStore, what: str) -> None:
        store.set(_key("error"), what)

    @staticmethod
    def record_fault(store: dist.TCPStore, epoch: int, error) -> None:
        """What ended group ``epoch`` as one of its ranks saw it (a PeerError's parts)."""
        fault = {"seen_by": error.seen_by, "where": error.where, "missing": error.missing, "detail": error.detail}
        store.set(_key("fault", epoch, error.seen_by), json.dumps(fault))
