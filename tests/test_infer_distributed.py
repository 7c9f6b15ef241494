"""Split inference against the single-process reference, on CPU/gloo with 2-3 processes.

Direct tests drive BranchMode in two launched processes (placements, overlap, exchange dtypes, counted
collectives); CLI tests run the command line with ``--devices N`` and read its JSON (one through
``infer_distributed.py`` as users do, the others through its ``main`` in this process, which saves a start-up).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.distributed as dist
from conftest import randomize_

from decnn.common.record import RunRecord
from decnn.common.verification import EXCHANGE_BOUNDS
from decnn.deploy.export import main as export_main
from decnn.distributed.communicator import Communicator
from decnn.distributed.launcher import launch
from decnn.distributed.transport import TorchTensors
from decnn.emulation.links import EmulatedLink
from decnn.emulation.netns import links_available
from decnn.inference.branch_mode import BranchMode
from decnn.inference.inputs import Normalize
from decnn.inference.optimize import prepare_for_inference
from decnn.inference.tensor_codecs import make_codec
from decnn.jobs.infer import main
from decnn.partition import Placement, extract_branch
from decnn.train.config import load_config
from decnn.train.evaluate import evaluate_checkpoint
from decnn.train.trainer import train
from decnn.wire.exchange import WIRE_DTYPES, row_elements

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--model", "decnn_resnet18", "--width", "0.5"]
SYNTHETIC = ["--random-init", *SMALL, "--image-size", "32", "--num-images", "6", "--batch", "2", "--warmup", "1"]
PLACEMENTS = {"even": "0,1/2,3", "uneven": "0,1,2/3", "interleaved": "0,2/1,3"}
# Worst |dlogit| relative to the largest |logit| that each wire format may cost: what --verify allows.
TOLERANCE = {dtype: bound for dtype, bound in EXCHANGE_BOUNDS.items() if dtype != "fp32"}


def _small_model() -> torch.nn.Module:
    return randomize_(timm.create_model("decnn_resnet18", width=0.5, num_classes=10))


def _scenario_worker() -> dict:
    """On each of 2 ranks: every placement x overlap x exchange dtype on the same images, collectives counted
    at torch.distributed itself (not by the communicator)."""
    counts = {}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return fn(*args, **kwargs)
        return wrapper

    for name in ("broadcast", "all_to_all_single", "reduce", "all_reduce", "send", "recv", "isend", "irecv",
                 "all_gather", "gather", "scatter", "all_to_all", "barrier"):
        setattr(dist, name, counted(name, getattr(dist, name)))

    torch.set_num_threads(1)
    comm = Communicator(timeout_s=60)
    model = _small_model()
    normalize = Normalize(model.pretrained_cfg["mean"], model.pretrained_cfg["std"], comm.device)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8) for _ in range(2)]
    inputs = batches if comm.rank == 0 else [torch.empty_like(b) for b in batches]
    out = {"counts": {}}
    with torch.inference_mode():
        out["reference"] = torch.cat([model(normalize(x)) for x in batches])
    for pname, spec in PLACEMENTS.items():
        branch = extract_branch(model, Placement.parse(4, spec), comm.rank)
        if pname != "interleaved":  # one placement keeps plain NCHW activations: both layouts are exchanged
            branch = prepare_for_inference(branch)
        for dtype in ("fp32", "fp16", "bf16", "int8") if pname == "even" else ("fp32",):
            mode = BranchMode(branch, comm, make_codec(dtype), normalize, in_flight=1)
            counts.clear()
            one_at_a_time = [mode.step([x]) for x in inputs]
            out["counts"][(pname, dtype)] = dict(counts)
            if comm.rank == 0:
                out[(pname, dtype, 1)] = torch.cat([o[0] for o in one_at_a_time])
        overlapped = BranchMode(branch, comm, make_codec("fp32"), normalize, in_flight=2).step(inputs)
        if comm.rank == 0:
            out[(pname, "fp32", 2)] = torch.cat(overlapped)
    comm.close()
    return out


@pytest.fixture(scope="module")
def scenarios():
    return launch(_scenario_worker, (), 2)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_branches_on_two_processes_reproduce_the_whole_model(scenarios, placement):
    got, ref = scenarios[0][(placement, "fp32", 1)], scenarios[0]["reference"]
    assert (got - ref).abs().max().item() <= 1e-4
    assert torch.equal(got.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_overlap_gives_the_same_logits_as_one_batch_at_a_time(scenarios, placement):
    assert torch.equal(scenarios[0][(placement, "fp32", 2)], scenarios[0][(placement, "fp32", 1)])


@pytest.mark.parametrize("dtype", TOLERANCE)
def test_compressed_exchange_stays_within_its_tolerance(scenarios, dtype):
    got, ref = scenarios[0][("even", dtype, 1)], scenarios[0]["reference"]
    assert (got - ref).abs().max().item() <= TOLERANCE[dtype] * ref.abs().max().item()
    assert (got.argmax(1) == ref.argmax(1)).float().mean().item() >= 5 / 6


def test_each_batch_costs_one_broadcast_one_all_to_all_per_shuffle_point_and_one_reduce(scenarios):
    per_batch = {"broadcast": 1, "all_to_all_single": 3, "reduce": 1}  # ResNet-18: 3 shuffle points
    for rank in (0, 1):
        for counts in scenarios[rank]["counts"].values():
            assert counts == {k: 2 * v for k, v in per_batch.items()}  # two batches


@pytest.mark.parametrize("signed", [False, True], ids=["post-relu", "signed"])
@pytest.mark.parametrize("dtype", ["fp32", *TOLERANCE])
def test_codec_round_trip(dtype, signed, rng):
    codec = make_codec(dtype)
    rows = torch.relu(torch.randn(12, 50, generator=rng)) * 3  # (image, channel) rows of 50 pixels
    if signed:
        rows = rows - 1.5 * torch.rand(12, 1, generator=rng)
    wire = TorchTensors().empty((12, row_elements(dtype, 50)), WIRE_DTYPES[dtype])
    back = codec.decode(codec.encode(rows, wire).clone(), torch.empty(12, 50))
    # int8: half a step of (max - min) / 255 per row; 16-bit floats: their relative precision
    top = rows.abs().max().item()
    step = (rows.amax(-1) - rows.amin(-1)).max().item() / 255
    bound = {"fp32": 0.0, "fp16": top * 2**-11, "bf16": top * 2**-8, "int8": step / 2}[dtype]
    assert (back - rows).abs().max().item() <= bound * 1.001 + 1e-6


# -- the command line, as users run it --


def _cli(*args: str, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "infer_distributed.py"), *args], cwd=ROOT, timeout=timeout,
                          capture_output=True, text=True, env={**os.environ, **(env or {})})


def _report(tmp_path: Path, *args: str, entry_script: bool = False) -> dict:
    """Run with ``args`` and read the JSON report: through ``infer_distributed.py`` as users do, or (faster,
    the same code below the script's two lines) through its ``main`` in this process."""
    out = tmp_path / "report.json"
    args = (*args, "--out", str(out), "--log-dir", str(tmp_path / "tb"))
    if entry_script:
        res = _cli(*args)
        assert res.returncode == 0, res.stderr[-3000:]
    else:
        assert main(list(args)) == 0
    report = json.loads(out.read_text())
    assert RunRecord.from_dict(report).to_dict() == report  # every key is a record field, and nothing is lost
    return report


def _assert_one_pinned_thread_per_rank(r: dict) -> None:
    """Every mode gets the same resources when run with --threads 1 on these 2 cores: one thread and a
    core of its own per process (the single, data, branch and pipeline tests each check it)."""
    assert r["threads_per_rank"] == [1] * r["devices"]
    assert r["cores_per_rank"] == [[rank] for rank in range(r["devices"])]
    assert len(r["breakdown_per_rank"]) == r["devices"]


def test_cli_branch_uneven_overlapped_verified_and_checked(tmp_path):
    r = _report(tmp_path, *SYNTHETIC, "--devices", "2", "--placement", "0,1,2/3", "--overlap", "--verify",
                "--check-exchange", "--threads", "1", entry_script=True)
    _assert_one_pinned_thread_per_rank(r)
    for key in ("model", "groups", "width", "mode", "devices", "batch", "exchange_dtype", "throughput_ips",
                "bytes_per_image", "params_per_rank"):
        assert key in r
    assert set(r["latency_ms"]) >= {"p50", "p95", "p99"}
    assert (r["mode"], r["devices"], r["placement"], r["overlap"]) == ("branch", 2, [[0, 1, 2], [3]], 2)
    assert r["max_abs_diff"] <= 1e-4 and r["max_rel_diff"] <= 1e-4 and r["top1_agreement"] == 1.0
    assert r["verified"] is True and r["verify_bound"] == 1e-4
    # --check-exchange: one all-to-all of CRCs beside each shuffle point's activations
    assert r["collectives_per_batch"] == [{"broadcast": 1, "all_to_all": 6, "reduce": 1}] * 2
    assert r["params_per_rank"][0] > 2.5 * r["params_per_rank"][1]  # 3 groups vs 1
    assert len(r["bytes_per_image_per_point"]) == 3 and r["bytes_per_image"] > 0
    assert list(Path(r["run_dir"]).glob("events.out.tfevents.*"))


@pytest.mark.parametrize("flag, message", [
    ("--verify", "error: verification failed: image 3 differs from the whole model by max |dlogit| "),
    ("--check-exchange", "error: rank 1 failed: ExchangeCorrupted: shuffle point 0: the block rank 0 sent to rank 1 "
                         "arrived corrupted"),
])
def test_a_corrupted_exchange_fails_verify_naming_the_image_and_the_check_naming_the_ranks(flag, message, tmp_path,
                                                                                          monkeypatch, capsys):
    """Rank 1's transport flips the bytes of the block it receives at step 3 (image 3: batches of 1)."""
    monkeypatch.setenv("DECNN_INJECT_FAULT", "1:3:flip")
    out = tmp_path / "report.json"
    assert main([*SYNTHETIC, "--batch", "1", "--devices", "2", "--threads", "1", flag, "--out", str(out),
                 "--log-dir", ""]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), errors
    if flag == "--verify":  # beyond fp32's bound, and said so in the record as well
        assert "beyond the bound 0.0001" in errors[0] and json.loads(out.read_text())["verified"] is False
    else:  # the run ended at the corrupted block, before any report
        assert not out.exists()


def test_cli_int8_exchange_saves_bytes_and_agrees_and_traces_its_parts(tmp_path):
    r = _report(tmp_path, *SYNTHETIC, "--devices", "2", "--exchange-dtype", "int8", "--verify",
                "--trace", str(tmp_path / "trace"))
    assert 0.7 < r["bytes_saved_vs_fp32"] < 0.75  # a quarter of the bytes, plus 8 per (channel, image)
    assert r["max_rel_diff"] <= TOLERANCE["int8"] and r["top1_agreement"] >= 5 / 6
    for rank in (0, 1):  # the breakdown's parts are named ranges of each rank's Chrome trace
        trace = json.loads((tmp_path / "trace" / f"rank{rank}.json").read_text())
        names = {e["name"] for e in trace["traceEvents"]}
        assert {"segment 0", "segment 3", "pack", "codec", "head", "wait all_to_all 0", "wait reduce"} <= names


def test_cli_data_mode_equals_single(tmp_path):
    r = _report(tmp_path, *SYNTHETIC, "--num-images", "8", "--devices", "2", "--mode", "data", "--verify",
                "--threads", "1")
    _assert_one_pinned_thread_per_rank(r)
    assert r["max_abs_diff"] <= 1e-4 and r["max_rel_diff"] <= 1e-4 and r["top1_agreement"] == 1.0
    assert r["collectives_per_batch"][0] == {"scatter": 0.5, "gather": 0.5}  # one of each per 2 batches


@pytest.mark.slow  # test_pipeline_mode (ragged batches, counts) and test_split_model (the pipeline) check it fast
def test_cli_pipeline_mode_runs_a_plain_resnet_and_keeps_the_ragged_batch(tmp_path):
    r = _report(tmp_path, "--random-init", "--model", "decnn_resnet18", "--groups", "1", "--width", "0.5",
                "--image-size", "32", "--num-images", "5", "--batch", "2", "--warmup", "1", "--devices", "2",
                "--mode", "pipeline", "--overlap", "2", "--verify", "--threads", "1")
    _assert_one_pinned_thread_per_rank(r)
    assert r["groups"] == 1 and r["max_abs_diff"] <= 1e-4 and r["top1_agreement"] == 1.0
    assert r["images"] == 5 and len(r["pipeline_stages"]) == 2  # batches of 2, 2 and 1: none dropped
    # Counted by the communicator: 5 micro-batches of activations out, 3 batches of logits back.
    assert r["collectives_per_batch"][0] == {"send": 5 / 3, "recv": 1.0}


@pytest.mark.parametrize("mode", ["single", "data", "branch", "pipeline"])
def test_every_mode_is_built_from_a_prepared_model(mode):
    """In a group of one: whatever the mode, its module has BN folded and channels-last weights."""
    from decnn.inference.build import build_mode
    from decnn.inference.optimize import is_prepared
    from decnn.inference.settings import InferConfig
    from decnn.inference.spec import resolve_model

    cfg = InferConfig(mode=mode, random_init=True, model="decnn_resnet18", width=0.5)
    spec = resolve_model(cfg)
    comm = Communicator(timeout_s=10)
    try:
        built = build_mode(cfg, comm, spec, Normalize(spec.mean, spec.std, comm.device), 32)
    finally:
        comm.close()
    assert not is_prepared(spec.build()) and is_prepared(built.mode.module)


@pytest.fixture(scope="module")
def checkpoint_and_data(standin, tmp_path_factory):
    """A checkpoint from the trainer (one short epoch at 32x32) and the stand-in dataset."""
    folder = tmp_path_factory.mktemp("ckpt")
    root = standin
    cfg = load_config(overrides=[
        "model.name=decnn_resnet18", "model.groups=4", "model.width=0.25", f"data.root={root}",
        "data.image_size=32", "data.batch_size=16", "data.workers=0", "data.max_train_images=64",
        "schedule.epochs=1", "schedule.warmup_epochs=0", "train.amp=none", "train.channels_last=false",
        f"run.out_dir={folder}", "run.name=run",
    ])
    train(cfg)
    return folder / "run" / "best.pt", root, cfg


def test_cli_checkpoint_on_val_images_uneven_placement(tmp_path, checkpoint_and_data):
    ckpt, root, cfg = checkpoint_and_data
    r = _report(tmp_path, "--checkpoint", str(ckpt), "--data-root", str(root), "--batch", "50", "--warmup", "1",
                "--devices", "2", "--placement", "0,1,2/3", "--verify")
    assert (r["devices"], r["images"], r["image_size"]) == (2, 350, 32)  # the whole val split, resized as in training
    assert r["max_abs_diff"] <= 1e-4 and r["top1_agreement"] == 1.0
    # The split run scores exactly what the trainer's own evaluation scores on the same images.
    expected = evaluate_checkpoint(ckpt, cfg)
    assert r["top1"] == pytest.approx(expected["top1"]) and r["top5"] == pytest.approx(expected["top5"])
    # The same run from per-device shards (the placement comes with them): the same scores.
    assert export_main([str(ckpt), "--placement", "0,1,2/3", "--out", str(tmp_path / "shards")]) == 0
    r = _report(tmp_path, "--checkpoint", str(tmp_path / "shards"), "--data-root", str(root), "--batch", "50",
                "--warmup", "0", "--devices", "2")
    assert (r["top1"], r["top5"]) == (pytest.approx(expected["top1"]), pytest.approx(expected["top5"]))


@pytest.mark.slow  # test_links checks torch.distributed across namespaces in `make test`
@pytest.mark.netns
def test_cli_two_hosts_through_an_emulated_link(tmp_path):
    """Two network namespaces joined by a shaped link, one process each: the multi-host path."""
    ok, reason = links_available()
    if not ok:
        pytest.skip(reason)
    with EmulatedLink("200mbit", num_hosts=2, name_prefix="decnninf") as link:
        endpoint = f"{link.hosts[0].address}:29500"
        procs = [
            link.popen(i, [sys.executable, str(ROOT / "infer_distributed.py"), *SYNTHETIC, "--devices", "1",
                           "--nnodes", "2", "--rdzv-endpoint", endpoint, "--timeout", "30", "--verify", "--log-dir",
                           "", "--out", str(tmp_path / f"host{i}.json")],
                       cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for i in range(2)
        ]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errors
    r = json.loads((tmp_path / "host0.json").read_text())
    assert r["devices"] == 2 and r["top1_agreement"] == 1.0 and r["max_abs_diff"] <= 1e-4
    assert not (tmp_path / "host1.json").exists()  # only rank 0 reports


# -- in-process: a group of one, and bad settings caught before any process group starts --


def test_single_mode_in_process(tmp_path):
    out = tmp_path / "single.json"
    threads, cores = torch.get_num_threads(), os.sched_getaffinity(0)
    assert main([*SYNTHETIC, "--mode", "single", "--threads", "1", "--verify", "--out", str(out), "--log-dir", ""]) == 0
    r = json.loads(out.read_text())
    _assert_one_pinned_thread_per_rank(r)
    # The run pinned this process to one core and one thread; the caller gets both back.
    assert (torch.get_num_threads(), os.sched_getaffinity(0)) == (threads, cores)
    assert (r["mode"], r["devices"], r["bytes_per_image"]) == ("single", 1, 0)
    assert r["max_abs_diff"] <= 1e-4 and r["top1_agreement"] == 1.0
    assert not dist.is_initialized()


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_branch_mode_on_one_device_is_the_whole_model(tmp_path, dtype):
    """All groups on one device (an elastic split down to its last device): every exchange sends nothing."""
    out = tmp_path / "branch1.json"
    assert main([*SYNTHETIC, "--mode", "branch", "--devices", "1", "--exchange-dtype", dtype, "--verify",
                 "--out", str(out), "--log-dir", ""]) == 0
    r = json.loads(out.read_text())
    assert (r["mode"], r["devices"], r["bytes_per_image"]) == ("branch", 1, 0)
    assert r["max_abs_diff"] <= 1e-4 and r["top1_agreement"] == 1.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--random-init", "--devices", "5"], "groups=4 splits over at most 4 devices, not 5"),
        (["--random-init", "--elastic", "--mode", "single"], "--elastic runs mode branch with backend torch"),
        (["--random-init", "--elastic", "--devices", "5"], "--min-devices 1, --max-devices 4, --devices 5"),
        (["--random-init", "--duration", "5", "--devices", "2"], "apply to --elastic runs"),
        (["--random-init", "--elastic", "--plan", "auto"], "--plan and --elastic"),
        (["--random-init", "--groups", "1", "--devices", "2"], "groups=1 splits over at most 1 devices, not 2"),
        (["--random-init", "--devices", "2", "--placement", "0,1/2"], "must assign each of the groups"),
        (["--random-init", "--mode", "single", "--devices", "2"], "mode single runs the whole model in one process"),
        (["--random-init", "--groups", "5"], "not divisible by groups=5"),
        (["--random-init", "--exchange-dtype", "fp16", "--mode", "data", "--devices", "2"], "applies to mode branch"),
        (["--devices", "2"], "give either --checkpoint PATH"),
        (["--checkpoint", "/nonexistent/ckpt.pt", "--devices", "2"], "no checkpoint at /nonexistent/ckpt.pt"),
    ],
)
def test_bad_settings_fail_before_any_process_group(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not dist.is_initialized()


def test_checkpoint_of_another_model_and_missing_dataset_fail_early(checkpoint_and_data, capsys):
    ckpt, _, _ = checkpoint_and_data
    assert main(["--checkpoint", str(ckpt), "--model", "decnn_resnet34", "--devices", "2"]) == 2
    assert "holds a decnn_resnet18 model, not the requested decnn_resnet34" in capsys.readouterr().err
    assert main(["--checkpoint", str(ckpt), "--data-root", "/nonexistent/tiny", "--devices", "2"]) == 2
    assert "/nonexistent/tiny" in capsys.readouterr().err
    assert not dist.is_initialized()
