"""The run record: JSON and TensorBoard round-trip through it, and an unknown key is an error."""

import dataclasses
import json

import pytest

from decnn.bench.compare import read_run
from decnn.common.logger import make_logger
from decnn.common.record import (
    EXPERIMENT_HPARAMS,
    EXPERIMENT_METRICS,
    HPARAMS,
    KEYS,
    METRIC_TAGS,
    Latency,
    RecordError,
    RunRecord,
)

RECORD = RunRecord(
    model="decnn_resnet34", groups=4, width=1.5, stem="tiny", mode="branch", devices=2, placement=[[0, 1], [2, 3]],
    batch=8, overlap=2, exchange_dtype="fp16", link="20mbit", name="decnn branch fp16 overlap",
    latency_ms=Latency(40.0, 45.0, 47.5, 41.0), throughput_ips=66.0, bytes_per_image=672e3,
    bytes_per_image_per_point=[224e3] * 3, params_per_device_mb=23.2, peak_rss_mb=310.0,
    collectives_per_batch=[{"broadcast": 1, "all_to_all": 3, "reduce": 1}] * 2, top1_agreement=1.0,
    max_abs_diff=2e-6, max_rel_diff=1e-7, verified=True, verify_bound=1e-4, worst_image=3,
    latency_ratio_vs_resnet34=2.5, predicted_latency_ms=38.0,
)


def test_json_round_trips_and_leaves_out_what_was_not_measured():
    data = json.loads(json.dumps(RECORD.to_dict()))
    assert "top1" not in data and data["latency_ms"] == {"p50": 40.0, "p95": 45.0, "p99": 47.5, "mean": 41.0}
    assert RunRecord.from_dict(data) == RECORD


def test_unknown_or_missing_keys_are_errors_not_none():
    with pytest.raises(RecordError, match=r"unknown run record key\(s\) \['latency_p50'\]; valid keys: model"):
        RunRecord.from_dict({**RECORD.to_dict(), "latency_p50": 1.0})
    with pytest.raises(RecordError, match=r"lacks \['devices'\], e.g. \{\"model\""):
        RunRecord.from_dict({"model": "decnn_resnet34", "groups": 4, "width": 1.5, "mode": "branch"})
    with pytest.raises(RecordError, match="latency_ms needs p50, p95, p99"):
        RunRecord.from_dict({**RECORD.to_dict(), "latency_ms": {"p50": 1.0}})
    with pytest.raises(AttributeError):
        RECORD.latency_p50  # noqa: B018  (a typo in code fails as loudly)
    assert len(KEYS) == len(set(KEYS))


def test_tensorboard_hparams_round_trip_through_real_event_files(tmp_path):
    with make_logger(tmp_path) as log:
        RECORD.log_hparams(log)
    hparams, metrics = read_run(tmp_path)
    back = RunRecord.from_tensorboard(hparams, metrics)
    assert back.tensorboard()[0] == RECORD.tensorboard()[0]  # settings, with their types
    assert back.tensorboard()[1] == pytest.approx(RECORD.tensorboard()[1])  # headline numbers (TensorBoard: fp32)
    assert (back.groups, back.devices, back.latency_ms.p95) == (4, 2, pytest.approx(45.0))
    assert back.verified is True  # a scalar in TensorBoard, a bool again in the record


def test_a_training_runs_hparams_read_as_a_training_record():
    hparams = {"model": "decnn_resnet34", "groups": 4.0, "width": 1.5, "params": 12139688, "batch_size": 256.0,
               "lr": 0.1, "optimizer": "sgd"}
    r = RunRecord.from_tensorboard(hparams, {"hparam/best_top1": 61.0, "hparam/best_top5": 84.0, "train/loss": 1.0})
    assert (r.mode, r.devices, r.batch, r.groups, r.top1, r.top5) == ("train", 1, 256, 4, 61.0, 84.0)
    assert r.params_per_device_mb == pytest.approx(12139688 * 4 / 2**20)


def test_rows_name_the_plain_network_and_say_where_their_accuracy_comes_from():
    plain = dataclasses.replace(RECORD, groups=1, width=1.0)
    assert (plain.architecture, RECORD.architecture) == ("resnet34", "resnet34 g4 x1.5")
    assert dataclasses.replace(plain, width=0.25).architecture == "resnet34 x0.25"
    assert RECORD.accuracy == "random weights" and RECORD.tensorboard()[0]["accuracy"] == "random weights"
    trained = dataclasses.replace(RECORD, checkpoint="runs/train/a/best.pt", trained_run="runs/train/a",
                                  trained_top1=61.0, trained_top5=84.0)
    assert trained.accuracy == "training's best"
    assert dataclasses.replace(trained, top1=60.5).accuracy == "measured"


def test_an_inference_row_carries_its_checkpoints_training_under_the_training_columns(tmp_path):
    trained = dataclasses.replace(RECORD, checkpoint="runs/train/a/best.pt", trained_run="runs/train/a",
                                  trained_top1=61.0, trained_top5=84.0)
    hparams, metrics = trained.tensorboard()
    assert (metrics["hparam/best_top1"], hparams["trained_run"]) == (61.0, "runs/train/a")
    with make_logger(tmp_path) as log:
        trained.log_hparams(log)
    back = RunRecord.from_tensorboard(*read_run(tmp_path))
    assert (back.mode, back.trained_run, back.trained_top1) == ("branch", "runs/train/a", pytest.approx(61.0))


def test_the_experiment_lists_every_column_a_record_writes():
    assert set(METRIC_TAGS) == set(EXPERIMENT_METRICS)
    assert set(HPARAMS) | {"architecture", "accuracy"} <= set(EXPERIMENT_HPARAMS)


def test_the_first_columns_say_what_a_row_is_and_counts_read_as_integers(tmp_path):
    """The tab shows five settings before any is ticked: the split, its runtime, devices and their CPU, the link,
    the exchange and the batches in flight are among them; a benchmark row's name leads its first column."""
    from decnn.common.logger import make_logger
    from decnn.common.record import FIRST_HPARAMS

    edge = dataclasses.replace(RECORD, name="edge decnn branch fp32", backend="onnxruntime", transport="mpi-tcp",
                               cpu_fraction=0.5, link="1gbit", overlap=2)
    hparams = edge.tensorboard()[0]
    shown = {k: hparams[k] for k in FIRST_HPARAMS}
    assert shown["split"] == "branch · edge" and shown["boards"] == "2 × 0.5 core"
    assert shown["wire"] == "1gbit · fp16 · overlap 2" and len(FIRST_HPARAMS) == 5
    assert dataclasses.replace(RECORD, backend="torch").split == "branch · torch"
    with make_logger(tmp_path / "bench" / "now" / "row", log_root=tmp_path) as log:
        edge.log_hparams(log)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "bench" / "now" / "row"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = next(plugin_data_pb2.HParamsPluginData.FromString(v).session_start_info for v in content.values()
                 if plugin_data_pb2.HParamsPluginData.FromString(v).HasField("session_start_info"))
    assert start.group_name.startswith("edge decnn branch fp32 x2 b")  # the name first, then the folder
    assert start.hparams["devices"].string_value == "2" and start.hparams["overlap"].string_value == "2"
