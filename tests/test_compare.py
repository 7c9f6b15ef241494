"""`decnn compare` reads back what runs logged to TensorBoard's HPARAMS tab."""

import pytest

from decnn.bench.compare import comparison_rows, comparison_table, load_runs, main, plot, read_run
from decnn.common.logger import make_logger
from decnn.common.record import Latency, RecordError, RunRecord


def _log_run(path, hparams, metrics):
    with make_logger(path) as log:
        log.scalar("train/loss", 1.0, 0)
        log.hparams(hparams, metrics)


@pytest.fixture
def runs(tmp_path):
    model = {"model": "decnn_resnet34", "groups": 4, "width": 1.5}
    _log_run(tmp_path / "train" / "a", {**model, "params": 12139688}, {"hparam/best_top1": 61.0})
    _log_run(tmp_path / "train" / "b", {**model, "params": 12139688}, {"hparam/best_top1": 64.0})
    bench = RunRecord(**model, mode="branch", devices=2, batch=1, link="20mbit", latency_ms=Latency(46.5, 50.0, 51.0),
                      throughput_ips=21.0, bytes_per_image=1.2e6, params_per_device_mb=23.2)
    _log_run(tmp_path / "bench" / "c", *bench.tensorboard())
    make_logger(tmp_path / "empty").close()  # a run that never logged hparams is skipped
    return tmp_path


def test_runs_are_read_back_with_their_hparams_and_metrics(runs):
    records = load_runs(runs)
    assert set(records) == {"train/a", "train/b", "bench/c"}
    c = records["bench/c"]
    assert (c.model, c.groups, c.mode, c.link) == ("decnn_resnet34", 4, "branch", "20mbit")
    assert c.latency_ms.p50 == pytest.approx(46.5)
    assert read_run(runs / "train" / "a")[1]["train/loss"] == pytest.approx(1.0)


def test_an_unknown_hparam_is_an_error_not_a_silent_none(tmp_path, capsys):
    _log_run(tmp_path / "x", {"model": "decnn_resnet34", "groups": 4, "width": 1.5, "mode": "branch", "devices": 2,
                              "lnk": "20mbit"}, {"infer/latency_p50_ms": 1.0})
    with pytest.raises(RecordError, match=r"unknown hparam\(s\) \['lnk'\]"):
        load_runs(tmp_path)
    assert main([str(tmp_path)]) == 2  # decnn compare: a usage error naming the run
    assert f"error: {tmp_path / 'x'}: unknown hparam(s) ['lnk']" in capsys.readouterr().err


def test_inference_rows_take_the_best_trained_accuracy_of_their_model(runs):
    rows = {r["run"]: r for r in comparison_rows(load_runs(runs))}
    assert rows["bench/c"]["top1"] == pytest.approx(64.0)
    own = RunRecord(model="decnn_resnet34", groups=4, width=1.5, mode="single", devices=1, trained_top1=61.0)
    assert comparison_rows({"x": own})[0]["top1"] == 61.0  # its own checkpoint's training, not the model's best
    assert rows["train/a"]["mode"] == "train" and rows["train/a"]["top1"] == pytest.approx(61.0)
    assert rows["train/a"]["params_per_device_mb"] == pytest.approx(12139688 * 4 / 2**20)
    table = comparison_table(list(rows.values()))
    assert "| bench/c | decnn_resnet34 | 4 | 1.5 | branch | 2 | 20mbit | 1 | 64 | 46.5 | 21 | 23.2 |" in table


def test_plot_is_written(runs, tmp_path):
    path = plot(comparison_rows(load_runs(runs)), tmp_path / "out" / "compare.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_runs_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no runs folder"):
        load_runs(tmp_path / "nope")


def test_runs_written_by_older_versions_still_read(tmp_path):
    """Before the log root held the experiment, each run wrote its own through torch's add_hparams, and a
    training row had no mode."""
    from torch.utils.tensorboard import SummaryWriter

    rows = {"train/old": ({"model": "decnn_resnet34", "groups": 4, "width": 1.5, "params": 12139688},
                          {"hparam/best_top1": 61.0}),
            "infer/old": ({"model": "decnn_resnet34", "groups": 4, "width": 1.5, "mode": "branch", "devices": 2},
                          {"infer/latency_p50_ms": 50.0, "infer/latency_p95_ms": 51.0, "infer/latency_p99_ms": 52.0})}
    for run, (hparams, metrics) in rows.items():
        with SummaryWriter(tmp_path / run) as writer:
            writer.add_hparams(hparams, metrics, run_name=".")
    _log_run(tmp_path / "infer" / "new", *RunRecord(model="decnn_resnet34", groups=4, width=1.5, mode="single",
                                                    devices=1, latency_ms=Latency(70.0, 71.0, 72.0)).tensorboard())
    records = load_runs(tmp_path)
    assert (records["train/old"].mode, records["train/old"].top1) == ("train", 61.0)
    assert (records["infer/old"].devices, records["infer/old"].latency_ms.p50) == (2, 50.0)
    rows = {r["run"]: r for r in comparison_rows(records)}
    assert rows["infer/new"]["top1"] == rows["infer/old"]["top1"] == 61.0
