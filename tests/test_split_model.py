"""decnn.split against the monolithic model, its bad-input errors, and its shutdown (no process left behind).

Each split model here starts 2 worker processes on CPU/gloo; the models are module-scoped to start few.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import timm
import torch
from conftest import randomize_

import decnn
from decnn.common.checkpoint import save_checkpoint
from decnn.common.errors import ConfigError
from decnn.deploy.export import main as export_main
from decnn.inference.inputs import Normalize
from decnn.serve.calls import WorkerError

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
BATCHES = (1, 3, 8)  # 3: a ragged batch for overlap=2 and for 2 micro-batches


def _images(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model = randomize_(timm.create_model("decnn_resnet18", width=0.5, num_classes=10))
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_name": "decnn_resnet18",
                           "model_kwargs": {"width": 0.5, "num_classes": 10}, "config": {"data": {"image_size": SIZE}}})
    return path


@pytest.fixture(scope="module")
def reference(checkpoint):
    from decnn.common.checkpoint import load_model

    model, _ = load_model(checkpoint)
    normalize = Normalize(model.pretrained_cfg["mean"], model.pretrained_cfg["std"], torch.device("cpu"))

    @torch.inference_mode()
    def logits(x):
        return model(normalize(x) if x.dtype == torch.uint8 else x)
    return logits


def _assert_same(split_logits, reference_logits):
    assert split_logits.shape == reference_logits.shape
    assert (split_logits - reference_logits).abs().max().item() <= 1e-4
    assert torch.equal(split_logits.argmax(1), reference_logits.argmax(1))


@pytest.fixture(scope="module")
def branch_model(checkpoint):
    with decnn.split(checkpoint, devices=2, overlap=2, threads=1) as model:
        yield model


@pytest.mark.parametrize("batch", BATCHES)
def test_branch_mode_equals_the_whole_model(branch_model, reference, batch):
    x = _images(batch, seed=batch)
    _assert_same(branch_model(x), reference(x))


def test_float_inputs_are_taken_as_normalised(branch_model, reference):
    x = torch.randn(2, 3, SIZE, SIZE)
    _assert_same(branch_model(x), reference(x))


def test_each_worker_holds_only_its_branch(branch_model, checkpoint):
    whole = sum(p.numel() * 4 for p in timm.create_model("decnn_resnet18", width=0.5, num_classes=10).parameters())
    held = [w["param_bytes"] for w in branch_model.stats()]
    assert len(held) == 2 and all(h < 0.6 * whole for h in held)


@pytest.mark.parametrize("bad, error, message", [
    (torch.zeros(2, 3, SIZE, SIZE, dtype=torch.float64), TypeError, "dtype torch.float64"),
    (torch.zeros(2, 4, SIZE, SIZE, dtype=torch.uint8), ValueError, r"shape \[2, 4, 32, 32\]"),
    (torch.zeros(3, SIZE, SIZE, dtype=torch.uint8), ValueError, r"expected \[B, 3, H, W\]"),
    (torch.zeros(0, 3, SIZE, SIZE, dtype=torch.uint8), ValueError, "B >= 1"),
    ([[0]], TypeError, "expected a torch.Tensor"),
])
def test_bad_input_is_named_and_the_workers_stay_healthy(branch_model, reference, bad, error, message):
    with pytest.raises(error, match=message):
        branch_model(bad)
    x = _images(2, seed=5)
    _assert_same(branch_model(x), reference(x))


def test_pipeline_mode_equals_the_whole_model(checkpoint, reference):
    with decnn.split(checkpoint, devices=2, mode="pipeline", overlap=2, threads=1) as model:
        for batch in BATCHES:
            x = _images(batch, seed=10 + batch)
            _assert_same(model(x), reference(x))


def test_shards_give_the_same_logits_and_reject_what_does_not_fit(checkpoint, reference, tmp_path):
    shards = tmp_path / "shards"
    assert export_main([str(checkpoint), "--placement", "0,1,2/3", "--out", str(shards)]) == 0
    with pytest.raises(ConfigError, match=r"placement 0,1,2/3, not 0,1/2,3"):
        decnn.split(shards, devices=2, placement="0,1/2,3")
    with decnn.split(shards, devices=2, threads=1) as model:
        x = _images(3, seed=7)
        _assert_same(model(x), reference(x))
    (shards / "device1.pt").rename(tmp_path / "device1.pt")
    with pytest.raises(ConfigError, match=r"has no shard device1\.pt"):
        decnn.split(shards, devices=2)
    other = tmp_path / "other"
    assert export_main([str(checkpoint), "--placement", "0,1,2/3", "--out", str(other)]) == 0
    (other / "device1.pt").rename(shards / "device1.pt")  # the same placement, another export
    with pytest.raises(WorkerError, match=r"rank 1 failed: .*device1\.pt belongs to another export"):
        decnn.split(shards, devices=2, threads=1)


def test_a_call_after_close_is_an_error(checkpoint):
    model = decnn.split(checkpoint, devices=2, threads=1)
    model.close()
    with pytest.raises(WorkerError, match="closed"):
        model(_images(1))
    assert all(not _alive(w["pid"]) for w in model.workers)


def test_bad_settings_fail_before_any_process_starts(checkpoint):
    with pytest.raises(ConfigError, match="mode 'data'"):
        decnn.split(checkpoint, devices=2, mode="data")
    with pytest.raises(ConfigError, match="neither a checkpoint"):
        decnn.split("no/such/best.pt", devices=2)
    with pytest.raises(ConfigError, match="groups=4 splits over at most 4 devices, not 5"):
        decnn.split(checkpoint, devices=5)


@pytest.mark.parametrize("source", ["module", "name", "checkpoint"])
def test_an_unknown_keyword_is_named_with_the_valid_ones(source, checkpoint):
    src = {"module": lambda: timm.create_model("decnn_resnet18", width=0.5), "name": lambda: "decnn_resnet18",
           "checkpoint": lambda: checkpoint}[source]()
    with pytest.raises(TypeError, match=r"'exchange_dtpye'; valid: devices, mode, placement, exchange_dtype"):
        decnn.split(src, devices=2, exchange_dtpye="int8")
    if source == "module":  # built already: its model settings cannot apply
        with pytest.raises(TypeError, match=r"'width'.*do not apply"):
            decnn.split(src, devices=2, width=0.5)


def test_errors_name_settings_in_python_syntax(checkpoint):
    with pytest.raises(ConfigError, match=r'^placement="0,1/2/3" names 3 devices, .* e\.g\. placement="0,1,2/3"$'):
        decnn.split(checkpoint, devices=2, placement="0,1/2/3")
    with pytest.raises(ConfigError, match=r"^overlap must be >= 1, e\.g\. overlap=2; got 0$"):
        decnn.split(checkpoint, devices=2, overlap=0)
    with pytest.raises(ConfigError, match=r'cannot read placement="0;1/2,3": .* e\.g\. placement="0,1,2/3"'):
        decnn.split(checkpoint, devices=2, placement="0;1/2,3")


def test_a_script_on_standard_input_is_told_what_to_do(checkpoint):
    script = f"import decnn\ndecnn.split({str(checkpoint)!r}, devices=2)\n"
    res = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: decnn.split cannot start its worker processes from a script read from "
                           "<stdin>") and "python -c" in last, res.stderr


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _session(sid: int) -> list[int]:
    """Live processes of session ``sid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


CALLER = """
import os, signal, sys, time, torch, decnn
from decnn.serve.calls import WorkerError
if __name__ == "__main__":
    how = sys.argv[2]
    model = decnn.split(sys.argv[1], devices=2, threads=1)
    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    model(x)
    print("ready", flush=True)
    if how == "exception":
        with model:
            raise RuntimeError("user code failed")
    if how == "sigint":
        while True:
            model(x)
    if how == "killed-worker":
        os.kill(model.workers[1]["pid"], signal.SIGKILL)
        try:
            model(x)
        except WorkerError as e:
            print(e, flush=True)
    # "exit" and "killed-worker": leave without close()
"""


HOWS = ["sigint", "exit", pytest.param("exception", marks=pytest.mark.slow), "killed-worker"]  # sigint first: it spins


def _start_caller(script: Path, checkpoint: Path, how: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), str(checkpoint), how], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            start_new_session=True)


@pytest.fixture(scope="module")
def callers(request, checkpoint, tmp_path_factory):
    """The callers of every selected case, started side by side so that their start-ups overlap."""
    script = tmp_path_factory.mktemp("caller") / "caller.py"
    script.write_text(textwrap.dedent(CALLER))
    hows = [item.callspec.params["how"] for item in request.session.items
            if item.originalname == "test_no_process_is_left_behind"]
    procs = {how: _start_caller(script, checkpoint, how) for how in hows}
    yield procs
    for proc in procs.values():
        if _session(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("how", HOWS)
def test_no_process_is_left_behind(callers, how):
    proc = callers[how]
    assert proc.stdout.readline().strip() == "ready"
    if how == "sigint":
        proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    output = proc.stdout.read()  # from the buffer readline filled too (communicate would skip it)
    expected = {"exit": 0, "exception": 1, "sigint": -signal.SIGINT, "killed-worker": 0}[how]
    assert proc.returncode == expected, output
    if how == "killed-worker":
        assert "rank 1 was killed by SIGKILL" in output
    deadline = time.monotonic() + 15
    while _session(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _session(proc.pid) == []
