"""The elastic split: a lost device shrinks the group to the devices left, a device that returns grows it back,
every call gets exactly one answer, equal to the whole model's, and the timeline says what happened."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

import decnn
from decnn.common import processes
from decnn.common.errors import ConfigError
from decnn.serve.calls import WorkerError

TIMEOUT_S = 4  # the devices' --timeout: short, so that a stopped device is noticed quickly
SLACK_S = 10  # the target: the first answer on the survivors within the timeout + 10 s
MODEL = dict(width=0.5)  # decnn_resnet18 G4 x0.5, seeded random weights


def _images(i: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(i)
    return torch.randint(0, 256, (1 + i % 3, 3, 32, 32), generator=g, dtype=torch.uint8)


class Stream:
    """``callers`` threads calling the model one counted request after another until stopped, so that
    requests are in flight whenever the membership changes."""

    def __init__(self, model, callers: int = 2):
        self.model, self.results, self.errors = model, {}, []
        self._next, self._lock, self._stop = 0, threading.Lock(), threading.Event()
        self._threads = [threading.Thread(target=self._call, daemon=True) for _ in range(callers)]
        for t in self._threads:
            t.start()

    def _call(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                i, self._next = self._next, self._next + 1
            try:
                self.results[i] = self.model(_images(i))
            except Exception as e:  # a lost call: the test fails on it
                self.errors.append((i, e))
                return

    def until(self, condition, limit_s: float = 120) -> None:
        deadline = time.monotonic() + limit_s
        while not condition():
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, f"not reached in {limit_s} s: {self.model.timeline.table()}"
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        for t in self._threads:
            t.join()
        return self._next


def _answered_by(model, devices: int, after_epoch: int = 0, count: int = 3) -> int | None:
    """The first epoch after ``after_epoch`` whose group of ``devices`` answered ``count`` calls, if any."""
    for p in model.timeline.periods():
        if p["epoch"] > after_epoch and len(p["devices"]) == devices and p["answered"] >= count:
            return p["epoch"]
    return None


def _shrinks_and_grows_back(model, stream: Stream, lost, fault: str, after_epoch: int) -> int:
    """Kill (then replace by a new device) or stop (then continue) the device process ``lost``; the epoch of the
    group grown back."""
    os.killpg(lost.pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    stream.until(lambda: _answered_by(model, 2, after_epoch))
    shrunk = _answered_by(model, 2, after_epoch)
    if fault == "kill":
        model.add_device()  # a new device takes the lost one's place
    else:
        os.killpg(lost.pid, signal.SIGCONT)  # the same device comes back
    stream.until(lambda: _answered_by(model, 3, after_epoch=shrunk))
    return _answered_by(model, 3, after_epoch=shrunk)


def test_a_killed_or_stopped_device_shrinks_the_split_and_its_return_grows_it_back():
    """One split of 3 devices: device1 killed and replaced by a new device (device3), then device2 stopped and
    continued."""
    with decnn.split("decnn_resnet18", devices=3, elastic=True, timeout=TIMEOUT_S, deadline=90, **MODEL) as model:
        reference = model.spec.build()
        stream = Stream(model)
        stream.until(lambda: _answered_by(model, 3))
        grown = _shrinks_and_grows_back(model, stream, model.local_devices[1], "kill", after_epoch=0)
        _shrinks_and_grows_back(model, stream, model.local_devices[2], "stop", after_epoch=grown)
        calls = stream.stop()
        # The grown group re-sliced its branches from the checkpoint: no device holds the whole model.
        whole = sum(p.numel() * 4 for p in reference.parameters())
        held = [d["param_bytes"] for d in model.stats()]
        assert len(held) == 3 and max(held) < 0.6 * whole
        devices = model.local_devices
    # No call lost, none answered twice: each of the counted calls returned once, from one request.
    assert sorted(stream.results) == list(range(calls))
    assert len({a.rid for a in model.timeline.answers}) == len(model.timeline.answers) == calls
    # Every answer equals the whole model's, whatever the group that gave it.
    with torch.inference_mode():
        for i, logits in stream.results.items():
            expected = reference(_normalized(model, _images(i)))
            assert (logits - expected).abs().max() <= 1e-4 and torch.equal(logits.argmax(1), expected.argmax(1))
    served = [p for p in model.timeline.periods() if p["answered"]]
    assert [(len(p["devices"]), p["placement"]) for p in served][:1] == [(3, "0,1/2/3")]
    assert (2, "0,1/2,3") in [(len(p["devices"]), p["placement"]) for p in served]
    changes = [c for c in model.timeline.changes() if c["outage_s"] is not None]
    shrinks, grows = [c for c in changes if c["lost"]], [c for c in changes if c["joined"]]
    assert [c["lost"] for c in shrinks] == [["device1"], ["device2"]]
    assert [c["joined"] for c in grows] == [["device3"], ["device2"]]
    # A stopped device is mostly seen as silent; under load the rendezvous (3 missed 1 s heartbeats) can drop it
    # before the 4 s collective timeout, and the survivors then see its connection go.
    seen = [("closed its connection",), ("did not answer within the timeout", "closed its connection")]
    for shrink, happened in zip(shrinks, seen):
        assert shrink["devices_after"] == 2 and f"{shrink['lost'][0]} lost: rank" in shrink["cause"], shrink
        assert any(h in shrink["cause"] for h in happened) and shrink["outage_s"] <= TIMEOUT_S + SLACK_S, shrink
    assert all(c["devices_after"] == 3 and "joined" in c["cause"] for c in grows)
    # Closing ends every device's agent and worker.
    assert all(proc.poll() is not None and not processes.group_alive(proc.pid) for proc in devices)


@pytest.mark.slow  # the shrink above and test_no_device_left_is_a_clear_error_within_the_deadline check it fast
def test_down_to_one_device_the_split_is_the_whole_model_and_with_none_a_call_fails_at_the_deadline():
    # 30 s for the first group to form (two devices starting torch on a busy machine), then a call's 8 s.
    with decnn.split("decnn_resnet18", devices=2, elastic=True, timeout=TIMEOUT_S, deadline=30, **MODEL) as model:
        reference = model.spec.build()
        model(_images(0))
        model.deadline = deadline_s = 8
        os.killpg(model.local_devices[1].pid, signal.SIGKILL)
        stream = Stream(model, callers=1)
        stream.until(lambda: _answered_by(model, 1))
        stream.stop()
        alone = [p for p in model.timeline.periods() if len(p["devices"]) == 1 and p["answered"]]
        assert alone[0]["devices"] == ["device0"] and alone[0]["placement"] == "0,1,2,3"
        with torch.inference_mode():
            for i, logits in stream.results.items():
                assert (logits - reference(_normalized(model, _images(i)))).abs().max() <= 1e-4
        os.killpg(model.local_devices[0].pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(WorkerError, match=rf"no answer within the {deadline_s} s deadline: no group of devices "
                                              r"is serving \(devices here: device0 exited \(-9\), device1 exited"):
            model(_images(1))
        assert time.monotonic() - start < deadline_s + 5


def test_a_device_that_cannot_build_its_branch_fails_the_call_at_once_naming_it():
    """Not a lost peer: the checkpoint is gone when the devices left re-form, so every group would fail alike."""
    with decnn.split("decnn_resnet18", devices=2, elastic=True, timeout=TIMEOUT_S, deadline=90, **MODEL) as model:
        model(_images(0))
        Path(model.spec.checkpoint).unlink()
        os.killpg(model.local_devices[1].pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(WorkerError, match=r"a device cannot serve this model: rank 0 \(device0\): \w+Error: "
                                              r".*random-init\.pt.*; the split model is closed"):
            model(_images(1))
        assert time.monotonic() - start < TIMEOUT_S + SLACK_S


def _normalized(model, images: torch.Tensor) -> torch.Tensor:
    from decnn.inference.inputs import Normalize

    return Normalize(model.spec.mean, model.spec.std, torch.device("cpu"))(images)


@pytest.mark.slow
@pytest.mark.netns
def test_over_namespaces_a_killed_stopped_or_cut_off_device_shrinks_the_split_and_its_return_grows_it():
    """Separate hosts (network namespaces, TCP between them): the caller streams batch-1 calls while device2 is
    killed and replaced, stopped and continued, its link taken down and up (`decnn bench elastic`)."""
    from decnn.bench.lost_devices import FAULTS, run_scenario
    from decnn.emulation.netns import links_available

    ok, why = links_available()
    if not ok:
        pytest.skip(why)
    report = run_scenario(FAULTS, TIMEOUT_S, model_args=("--model", "decnn_resnet18", "--width", "0.5",
                                                         "--image-size", "32"))
    timeline = report["timeline"]
    changes = {c["epoch"]: c for c in timeline["changes"]}
    happened = {"kill": "closed its connection", "stop": "did not answer within the timeout",
                "link": "did not answer within the timeout"}
    for row in report["faults"]:
        assert len(row["survivors"]) == 2 and row["to_survivors_s"] <= TIMEOUT_S + SLACK_S, row
        assert len(row["grown"]) == 3, row
        shrink = changes[row["shrunk_epoch"]]
        assert shrink["cause"].startswith("device2") and happened[row["kind"]] in shrink["cause"], shrink
        assert "device2" in changes[row["grown_epoch"]]["cause"]
    answers = timeline["answers"]
    assert report["calls"] == len(answers) == len({a["rid"] for a in answers})
    for period in timeline["periods"]:
        if period["answered"]:
            assert period["max_abs_diff"] <= 1e-4 and period["top1_agreement"] == 1.0, period


def test_no_device_left_is_a_clear_error_within_the_deadline():
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"no group of devices formed within the 3 s deadline \(no device here; "
                                          r"others join with `decnn device 127\.0\.0\.1:\d+ --nnodes 1:4`\)"):
        decnn.split("decnn_resnet18", devices=0, elastic=True, deadline=3, **MODEL)
    assert time.monotonic() - start < 3 + 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(placement="0,1/2,3"), "re-places the groups itself"),
        (dict(mode="pipeline"), "re-places the groups itself"),
        (dict(min_devices=3, max_devices=2), "needs 1 <= min devices <= max devices <= 4"),
        (dict(max_devices=5), "needs 1 <= min devices <= max devices <= 4"),
        (dict(devices=3, max_devices=2), r"min_devices=1, max_devices=2, devices=3"),
        (dict(deadline=0), "deadline=0: give the seconds a call may wait"),
    ],
)
def test_bad_elastic_settings_fail_before_any_process_starts(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        decnn.split("decnn_resnet18", **{"devices": 2, "elastic": True, **MODEL, **kwargs})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["127.0.0.1"], "give HOST:PORT, e.g. 10.0.0.1:29500"),
        (["127.0.0.1:29500", "--nnodes", "3:2"], "give MIN:MAX devices with 1 <= MIN <= MAX"),
    ],
)
def test_a_device_with_bad_arguments_is_a_usage_error(argv, message, capsys):
    from decnn.serve.device import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_an_elastic_split_needs_weights_every_device_can_reslice(tmp_path):
    with pytest.raises(ConfigError, match="needs a checkpoint file"):
        decnn.split(tmp_path, devices=2, elastic=True)
