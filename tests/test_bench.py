"""The benchmark's plan and its summary arithmetic (fast), and one tiny real run (slow)."""

import pytest

from decnn.bench.__main__ import main as bench_main
from decnn.bench.configurations import FAMILIES, configurations
from decnn.bench.summary import bench_table, read, summarize, write
from decnn.common.costmodel import Prediction
from decnn.common.record import Latency, RunRecord


def test_plan_has_baselines_once_and_each_split_per_link_and_dtype():
    configs = configurations(batches=[1, 8], devices=[2, 3, 4], links=[None, "20mbit"], dtypes=["fp32", "fp16"])
    labels = [c.label() for c in configs]
    assert len(labels) == len(set(labels))
    singles = [c for c in configs if c.mode == "single"]
    assert sorted((c.name, c.batch) for c in singles) == sorted(
        (n, b) for n in ("resnet34 single", "decnn single") for b in (1, 8))
    assert {c.devices for c in configs if c.mode == "branch"} == {2, 4}  # 3 does not divide 4 groups
    # The peers' spatial splits of plain ResNet-34 run on any count, the grid where the devices form one.
    spatial = {(c.mode, c.devices) for c in configs if c.mode in ("modnn", "grid")}
    assert spatial == {("modnn", 2), ("modnn", 3), ("modnn", 4), ("grid", 4)}
    assert all(c.model["groups"] == 1 for c in configs if c.mode in ("modnn", "grid"))
    branch = [c for c in configs if c.mode == "branch"]
    # batch x devices x (loopback: dtype x overlap on/off; 20mbit: dtype, plus fp16 with overlap)
    assert len(branch) == 2 * 2 * (2 * 2 + 2 + 1)
    pipeline = next(c for c in configs if c.mode == "pipeline" and c.batch == 1)
    assert pipeline.overlap == 1  # micro-batches cannot exceed the batch


def test_edge_rows_come_with_baselines_of_their_own_runtime():
    configs = configurations(batches=[1], devices=[2], links=[None, "20mbit"], dtypes=["fp32", "int8"],
                             runtimes=("torch", "edge"))
    edge = {c.label() for c in configs if c.runtime == "edge"}
    assert {"edge resnet34 single x1 b1", "edge decnn single x1 b1", "edge decnn branch int8 x2 b1 @20mbit",
            "edge decnn branch int8 overlap x2 b1 @20mbit"} <= edge
    torch_rows = [c for c in configs if c.runtime == "torch"]
    assert len(edge) == sum(c.mode in ("single", "branch", "modnn") for c in torch_rows)  # each split and baseline
    config = next(c for c in configs if c.name == "edge decnn branch fp32" and c.link is None)
    baselines = [{"resnet34 single": _report(1000, 1), "decnn single": _report(1000, 1),
                  "edge resnet34 single": _report(40, 25), "edge decnn single": _report(30, 33)}]
    record = summarize(config, [_report(15, 66)], baselines, None)
    assert record.latency_ratio_vs_decnn_single == pytest.approx(2.0)  # against ONNX Runtime, not PyTorch
    assert record.latency_ratio_vs_resnet34 == pytest.approx(40 / 15)


def test_branch_args_reach_infer_distributed():
    config = next(c for c in configurations([8], [2], [None], ["fp16"], overlap=3)
                  if c.overlap == 3 and c.mode == "branch")
    args = config.infer_args()
    assert args[args.index("--exchange-dtype") + 1] == "fp16"
    assert args[args.index("--overlap") + 1] == "3"
    assert args[args.index("--threads") + 1] == "1"


def _report(p50, ips):
    return RunRecord(model="decnn_resnet34", groups=4, width=1.5, mode="branch", devices=2, batch=1,
                     latency_ms=Latency(p50, p50, p50), throughput_ips=ips, bytes_per_image=10.0,
                     bytes_per_image_per_point=[10.0], params_per_device_mb=1.0, params_per_rank=[1, 1],
                     peak_rss_per_rank=[1, 1])


def test_ratios_are_taken_within_each_round_then_medianed(tmp_path):
    config = configurations([1], [2], [None], ["fp32"])[2]
    reports = [_report(20, 50), _report(40, 25), _report(30, 30)]
    # Round 2 was slow for everyone: within-round ratios stay 2x, 2x, 2x against ResNet-34.
    baselines = [{"resnet34 single": _report(40, 25), "decnn single": _report(30, 33)},
                 {"resnet34 single": _report(80, 12.5), "decnn single": _report(60, 17)},
                 {"resnet34 single": _report(60, 15), "decnn single": _report(45, 22)}]
    prediction = Prediction(step_s=0.015, per_batch_s=0.015, compute_s=0.01, transfer_s=0.005)
    record = summarize(config, reports, baselines, prediction)
    assert record.latency_ms.p50 == 30
    assert record.latency_ratio_vs_resnet34 == pytest.approx(2.0)
    assert record.latency_ratio_vs_decnn_single == pytest.approx(1.5)
    assert record.predicted_latency_ms == pytest.approx(15.0)
    assert "| decnn branch fp32 | 1 | loopback | – | 2 | 30.0 |" in bench_table([record])
    assert record.throughput_ratio_vs_decnn_single == pytest.approx(25 / 17)  # median of 50/33, 25/17, 30/22
    out = tmp_path / "bench.json"
    write([record], {"started": "now"}, out, None)  # the Markdown keeps the cost model's error table
    assert "| decnn branch fp32 | 1 | loopback | 2 | 15.0 | 30.0 | -50.0% |" in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_small_benchmark_runs_every_configuration(tmp_path):
    out = tmp_path / "bench.json"
    assert bench_main(["--batch", "1", "--rounds", "1", "--images", "2", "--warmup", "1",
                       "--exchange-dtype", "fp16", "--out", str(out), "--log-dir", str(tmp_path / "runs")]) == 0
    _, records = read(out)  # every key of the JSON is a record field
    assert {r.name for r in records} == {"resnet34 single", "decnn single", "decnn branch fp16",
                                        "decnn branch fp16 overlap", "resnet34 modnn", "resnet34 pipeline",
                                        "resnet34 data", "edge resnet34 single", "edge decnn single",
                                        "edge decnn branch fp16", "edge decnn branch fp16 overlap",
                                        "edge resnet34 modnn"}
    assert {r.transport for r in records if r.name.startswith("edge decnn branch")} == {"mpi-shm"}
    # The cost model predicts every split of one batch in flight, in both runtimes.
    assert all(r.predicted_latency_ms > 0 for r in records if r.mode in ("branch", "modnn") and r.overlap == 1)
    assert all(r.latency_ms.p50 > 0 and r.latency_ratio_vs_resnet34 > 0 for r in records)
    assert out.with_suffix(".md").exists() and any((tmp_path / "runs").rglob("events.out.tfevents.*"))


def _split(name, link, ratio):
    return RunRecord(model="decnn_resnet34", groups=4, width=1.5, mode="branch", devices=2, name=name, batch=1,
                     link=link, speedup_vs_one_device=ratio)


def test_crossover_is_interpolated_in_log_rate_and_bounded_outside_the_measured_links():
    from decnn.bench.summary import crossovers

    records = [_split("a", "loopback", 1.9), _split("a", "1gbit", 1.8), _split("a", "100mbit", 1.5),
               _split("a", "20mbit", 0.5),
               _split("b", "loopback", 1.9), _split("b", "1gbit", 1.5), _split("b", "20mbit", 1.1),
               _split("c", "loopback", 1.2), _split("c", "1gbit", 0.9)]
    rows = {c["name"]: c for c in crossovers(records)}
    # a: 1.5 at 100 Mbit/s, 0.5 at 20: ratio 1 halfway in log(rate), at sqrt(100 * 20) Mbit/s
    assert rows["a"]["crossover_bit_per_s"] == pytest.approx((100e6 * 20e6) ** 0.5)
    assert rows["b"]["crossover_bit_per_s"] is None and rows["b"]["bound"] == "below 20mbit"
    assert rows["c"]["bound"] == "above 1gbit"


def test_each_row_is_compared_with_its_own_model_on_one_device_of_its_runtime():
    """The paper's family: the peers split plain ResNet-50, DeCNN splits resnet50_s3_addchannel, both at 224."""
    configs = configurations([1], [2], [None], ["fp32"], runtimes=("torch", "edge"), families=("resnet50",))
    modnn = next(c for c in configs if c.name == "edge resnet50 modnn")
    branch = next(c for c in configs if c.name == "edge decnn50 branch fp32")
    assert modnn.model == FAMILIES["resnet50"].plain and branch.model == FAMILIES["resnet50"].decnn
    args = next(c for c in configs if c.name == "resnet50 modnn").infer_args()
    assert args[args.index("--image-size") + 1] == "224" and args[args.index("--stem") + 1] == "imagenet"
    rounds = [{"edge resnet50 single": _report(100, 10), "edge decnn50 single": _report(60, 16)}]
    spatial = summarize(modnn, [_report(50, 20)], rounds, None)
    ours = summarize(branch, [_report(20, 50)], rounds, None)
    assert spatial.speedup_vs_one_device == pytest.approx(2.0) and ours.speedup_vs_one_device == pytest.approx(3.0)
    assert spatial.latency_ratio_vs_decnn_single == pytest.approx(1.2)  # slower than DeCNN on one device
    assert spatial.latency_ratio_vs_resnet34 is None  # no ResNet-34 in this family
    assert "| – | 1.20x |" in bench_table([spatial])
