"""The device runtime (decnn.edge): torch's wire bytes, the whole model's logits, no torch, MPI across hosts,
and every fault ending in one line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import randomize_

from decnn.common.checkpoint import save_checkpoint
from decnn.deploy.export import main as export_main
from decnn.distributed.transport import TorchTensors
from decnn.edge.numpy_codecs import make_codec
from decnn.inference.tensor_codecs import make_codec as torch_codec
from decnn.wire.exchange import EXCHANGE_DTYPES, WIRE_DTYPES, row_elements

SIZE = 32
IMAGES = 8


def _export(tmp: Path, placement: str, **kwargs):
    model = randomize_(timm.create_model("decnn_resnet18", width=0.5, num_classes=10, **kwargs))
    save_checkpoint(tmp / "best.pt", {"model": model.state_dict(), "model_name": "decnn_resnet18",
                                      "model_kwargs": {"width": 0.5, "num_classes": 10, **kwargs},
                                      "config": {"data": {"image_size": SIZE}}})
    assert export_main([str(tmp / "best.pt"), "--placement", placement, "--out", str(tmp / "shards"), "--onnx"]) == 0
    images = np.random.default_rng(0).integers(0, 256, (IMAGES, 3, SIZE, SIZE), dtype=np.uint8)
    np.savez(tmp / "inputs.npz", images=images, labels=np.arange(IMAGES) % 10)
    return model, tmp


@pytest.fixture
def g4(onnx_export):
    """DeCNN ResNet-18 G4 x0.5 on 2 devices, evenly (the export the ONNX tests share)."""
    return onnx_export


@pytest.fixture(scope="module")
def g8(tmp_path_factory):
    """G8 over 3 devices, unevenly (3/3/2); one block a stage and one shuffle (fewer graphs to export)."""
    return _export(tmp_path_factory.mktemp("g8"), "0,1,2/3,4,5/6,7", groups=8, layers=(1, 1, 1, 1),
                   shuffle_after=(1,))


def edge(directory: Path, *args: str, env: dict | None = None, timeout: float = 180, **kw):
    """``decnn edge DIRECTORY ARGS`` in a process of its own."""
    return subprocess.run([sys.executable, "-m", "decnn.edge.launch", str(directory), *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})}, **kw)


def reference(model, tmp: Path) -> torch.Tensor:
    images = torch.from_numpy(np.load(tmp / "inputs.npz")["images"])
    mean, std = (torch.tensor(model.pretrained_cfg[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.inference_mode():
        return model((images / 255 - mean) / std)


def leftovers(directory: Path) -> list[str]:
    """Device processes of a run on ``directory`` still alive."""
    out = subprocess.run(["pgrep", "-f", f"decnn.edge.device_run {directory}"], capture_output=True, text=True).stdout
    return out.split()


@pytest.mark.parametrize("channels", [6, 0])  # 0: a device alone sends no rows
@pytest.mark.parametrize("dtype", EXCHANGE_DTYPES)
def test_codecs_write_the_wire_bytes_of_the_torch_runtime(dtype, channels):
    rows = torch.randn(channels, 20) * 4
    rows[:1] = 1.5  # a constant row (int8: zero range)
    ours, theirs, tensors = make_codec(dtype), torch_codec(dtype), TorchTensors()
    shape = (channels, row_elements(dtype, 20))
    wire = theirs.encode(rows.clone(), tensors.empty(shape, WIRE_DTYPES[dtype]))
    mine = ours.encode(rows.numpy().copy(), np.empty(shape, WIRE_DTYPES[dtype]))
    assert tuple(wire.shape) == mine.shape == shape
    assert tensors.numpy(wire).tobytes() == mine.tobytes()
    decoded = ours.decode(mine, np.empty((channels, 20), np.float32))
    assert np.array_equal(decoded, theirs.decode(wire, torch.empty(channels, 20)).numpy())


@pytest.mark.parametrize(("export", "batch"), [("g4", 1), ("g4", 3), ("g4", 8), ("g8", 3)])
def test_split_logits_equal_the_whole_models(export, batch, request):
    model, tmp = request.getfixturevalue(export)
    out = tmp / f"b{batch}"
    checked = export == "g8"  # --check-exchange on 3 devices, uneven: every block's CRC matches
    run = edge(tmp / "shards", "--inputs", str(tmp / "inputs.npz"), "--batch", str(batch), "--verify",
               "--logits", f"{out}.npy", "--out", f"{out}.json", "--warmup", "1", *["--check-exchange"] * checked)
    assert run.returncode == 0, run.stderr
    logits, expected = torch.from_numpy(np.load(f"{out}.npy")), reference(model, tmp)
    assert (logits - expected).abs().max() <= 1e-4
    assert torch.equal(logits.argmax(1), expected.argmax(1))
    record = json.loads(Path(f"{out}.json").read_text())
    devices = 3 if export == "g8" else 2
    assert record["devices"] == devices and record["transport"] == "mpi-shm" and record["images"] == IMAGES
    assert record["top1_agreement"] == 1.0 and record["max_abs_diff"] <= 1e-4  # against model.onnx
    assert record["verified"] is True and record["verify_bound"] == 1e-4
    assert record["top1"] == (expected.argmax(1) == torch.arange(IMAGES) % 10).float().mean().item() * 100
    whole = sum(p.numel() * 4 for p in model.parameters())
    assert max(record["params_per_rank"]) < 0.6 * whole
    # Per batch: one broadcast, one all-to-all per shuffle point (and one of CRCs if checked), one reduce.
    per_batch = {"broadcast": 1, "all_to_all": len(model.shuffles) * (2 if checked else 1), "reduce": 1}
    assert all(c == per_batch for c in record["collectives_per_batch"])


@pytest.mark.parametrize("flag, message", [
    ("--verify", "error: verification failed: image 3 differs from the whole model by max |dlogit| "),
    ("--check-exchange", "error: shuffle point 0: the block rank 1 sent to rank 0 arrived corrupted"),
])
def test_a_corrupted_exchange_fails_verify_naming_the_image_and_the_check_naming_the_ranks(g4, flag, message,
                                                                                          tmp_path):
    """Rank 0's transport flips the bytes of the block it receives at step 3 (image 3: batches of 1)."""
    _, tmp = g4
    out = tmp_path / "report.json"
    run = edge(tmp / "shards", "--inputs", str(tmp / "inputs.npz"), "--batch", "1", "--warmup", "1", flag,
               "--out", str(out), env={"DECNN_INJECT_FAULT": "0:3:flip"})
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 1 and len(errors) == 1 and errors[0].startswith(message), run.stderr
    if flag == "--verify":  # beyond fp32's bound, and said so in the record as well
        assert "beyond the bound 0.0001" in errors[0] and json.loads(out.read_text())["verified"] is False
    else:  # the run ended at the corrupted block, before any report
        assert not out.exists()
    assert not leftovers(tmp / "shards")


def test_overlap_gives_the_same_logits_and_int8_moves_a_quarter(g4):
    model, tmp = g4
    runs = {}
    for name, args in {"plain": [], "overlap": ["--overlap", "3"], "int8": ["--exchange-dtype", "int8"]}.items():
        run = edge(tmp / "shards", "--inputs", str(tmp / "inputs.npz"), "--batch", "2", "--logits",
                   str(tmp / f"{name}.npy"), "--out", str(tmp / f"{name}.json"), "--warmup", "1", *args)
        assert run.returncode == 0, run.stderr
        runs[name] = (np.load(tmp / f"{name}.npy"), json.loads((tmp / f"{name}.json").read_text()))
    assert np.array_equal(runs["overlap"][0], runs["plain"][0])
    int8_logits, int8_record = runs["int8"]
    assert int8_record["bytes_per_image"] < 0.3 * runs["plain"][1]["bytes_per_image"]
    expected = reference(model, tmp)
    assert (torch.from_numpy(int8_logits) - expected).abs().max() < 0.05 * expected.abs().max()


def test_a_device_runs_with_torch_unimportable(g4, tmp_path):
    _, tmp = g4
    fake = tmp_path / "no-torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch is not installed on this device')\n")
    path = os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])
    run = edge(tmp / "shards", "--images", "4", "--out", str(tmp_path / "r.json"), "--log-dir",
               str(tmp_path / "runs" / "infer"), env={"PYTHONPATH": path})
    assert run.returncode == 0, run.stderr
    (logged,) = (tmp_path / "runs" / "infer").iterdir()  # TensorBoard too, without torch
    assert "-onnxruntime-mpi-shm-" in logged.name and any(logged.glob("events.out.tfevents.*"))
    # torch alone takes ~800 MiB here: a device that had imported it could not stay under this.
    assert json.loads((tmp_path / "r.json").read_text())["peak_rss_mb"] < 250


# hang: slow (a stopped device is silent the same way, and ends the run through the same deadline)
@pytest.mark.parametrize("fault", ["kill", "stop", pytest.param("hang", marks=pytest.mark.slow)])
def test_a_lost_device_ends_the_run_in_one_line_naming_it(g4, fault):
    _, tmp = g4
    timeout = 3
    start = time.monotonic()
    run = edge(tmp / "shards", "--images", "64", "--timeout", str(timeout), env={"DECNN_INJECT_FAULT": f"1:2:{fault}"})
    elapsed = time.monotonic() - start
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 1 and len(errors) == 1, run.stderr
    assert "rank 1 (host" in errors[0]
    assert "Traceback" not in run.stderr and "BAD TERMINATION" not in run.stdout + run.stderr
    assert elapsed <= timeout + 5 + 5, elapsed  # + start-up, which a loaded CI machine stretches
    assert not leftovers(tmp / "shards")


def test_ctrl_c_ends_every_device_with_130(g4):
    _, tmp = g4
    # Rank 1 falls behind at its third timed step and says so: then the run is surely in its timed loop.
    proc = subprocess.Popen([sys.executable, "-m", "decnn.edge.launch", str(tmp / "shards"), "--images", "100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "DECNN_INJECT_FAULT": "1:2:slow"})
    seen = []
    while not seen or not seen[-1].startswith("[fault]"):
        seen.append(proc.stderr.readline())
        assert seen[-1], "".join(seen)  # the run ended before its timed loop
    os.killpg(proc.pid, signal.SIGINT)
    _, rest = proc.communicate(timeout=30)
    err = "".join(seen) + rest
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err
    assert err.count("interrupted") == 1 and "Traceback" not in err
    assert not leftovers(tmp / "shards")


def test_the_launcher_keeps_a_rank_s_identity_apart_from_the_output_mpiexec_puts_behind_it():
    from decnn.edge.device_run import IDENTITY
    from decnn.edge.launch import Report

    report = Report()
    shown = report.feed(f"{IDENTITY} rank 1 pid 42 host vm;error: rank 0 (host vm): --inputs bad.npz: unreadable\n")
    assert shown == "error: rank 0 (host vm): --inputs bad.npz: unreadable\n"
    assert report.ranks == {"42": ("1", "vm")} and report.errors == [shown.strip()]


def test_bad_folders_are_one_line_and_exit_2(g4, g8, tmp_path):
    _, tmp = g4
    run = edge(tmp_path / "missing")
    assert run.returncode == 2 and run.stderr.strip().startswith("error:") and "decnn export" in run.stderr
    run = edge(tmp / "shards", "--devices", "3")
    assert run.returncode == 2 and "exported for 2 devices, not 3" in run.stderr
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    run = edge(tmp / "shards", "--inputs", str(tmp_path / "bad.npz"))
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 2 and len(errors) == 1 and "--inputs" in errors[0], run.stderr
    run = edge(tmp / "shards", "--single", "--check-exchange")
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 2 and len(errors) == 1 and "--single runs none" in errors[0], run.stderr
    foreign = tmp_path / "foreign"
    subprocess.run(["cp", "-r", str(tmp / "shards"), str(foreign)], check=True)
    (foreign / "device1.plans.json").write_text((g8[1] / "shards" / "device1.plans.json").read_text())
    run = edge(foreign, "--images", "2")
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 2 and len(errors) == 1 and "belongs to another export" in errors[0], run.stderr
    assert not leftovers(foreign)


@pytest.mark.netns
def test_devices_in_two_namespaces_exchange_over_tcp(g4, tmp_path):
    from decnn.bench.edge import edge_argv, tx_bytes, write_launcher_exec
    from decnn.emulation.links import EmulatedLink
    from decnn.emulation.netns import links_available

    ok, reason = links_available()
    if not ok:
        pytest.skip(reason)
    model, tmp = g4
    with EmulatedLink("1gbit", 2, name_prefix="decnntest") as link:
        script = write_launcher_exec(link, tmp_path / "netns-exec")
        before = tx_bytes(link)
        argv = edge_argv(link, script, tmp / "shards", ["--inputs", str(tmp / "inputs.npz"), "--logits",
                                                        str(tmp_path / "l.npy"), "--out", str(tmp_path / "r.json")])
        run = link.run(0, argv, capture_output=True, text=True, timeout=180)
        sent = [a - b for a, b in zip(tx_bytes(link), before)]
    assert run.returncode == 0, run.stderr
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["transport"] == "mpi-tcp"
    # Every activation a rank sends crossed its veth (the run sends the same amount from each rank).
    activations = record["bytes_per_image"] * (IMAGES + 3) / 2  # timed images + warm-up, per rank
    assert min(sent) >= activations, (sent, activations)
    expected = reference(model, tmp)
    assert (torch.from_numpy(np.load(tmp_path / "l.npy")) - expected).abs().max() <= 1e-4


@pytest.mark.slow
def test_make_edge_installs_a_device_without_torch_that_runs_the_split(g4, tmp_path):
    _, tmp = g4
    repo = Path(__file__).resolve().parents[1]
    venv = tmp_path / "venv-edge"
    subprocess.run(["make", "-C", str(repo), "edge", f"EDGE_VENV={venv}"], check=True, capture_output=True,
                   timeout=900)
    python = str(venv / "bin" / "python")
    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0
    run = subprocess.run([python, "-m", "decnn.edge.launch", str(tmp / "shards"), "--images", "4", "--verify"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "top-1 agreement 100.00%" in run.stdout, run.stderr


def test_decnn_split_serves_the_export_through_the_device_runtime(g4):
    import decnn
    from decnn.serve.calls import WorkerError

    model, tmp = g4
    images = torch.from_numpy(np.load(tmp / "inputs.npz")["images"])
    expected = reference(model, tmp)
    with decnn.split(tmp / "shards", devices=2, backend="edge", overlap=2, threads=1) as split_model:
        for batch in (1, 3, 8):  # the devices stay up between calls, any batch size
            out = split_model(images[:batch])
            assert (out - expected[:batch]).abs().max() <= 1e-4
        pids = [w["pid"] for w in split_model.stats()]
        assert all(w["param_bytes"] < sum(p.numel() * 4 for p in model.parameters()) * 0.6 for w in split_model.stats())
        os.kill(pids[1], signal.SIGKILL)
        with pytest.raises(WorkerError, match=r"rank 1 \(host .*\) died"):
            split_model(images[:1])
    assert not leftovers(tmp / "shards")
