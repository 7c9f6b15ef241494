"""decnn bench scaling: its runs, its arithmetic and its tables (fast), and the command at tiny size (slow, root)."""

import json
import subprocess
import sys

import pytest

from decnn.bench.scaling import board_share, rows, runs, table, versus, write
from decnn.common.record import MB, Latency, RunRecord
from decnn.emulation.quota import quotas_available


def test_every_series_runs_each_device_count_over_each_link_and_its_whole_model_once():
    configs = runs(["resnet50"], [1], ["loopback", "100mbit"])
    labels = [c.label() for c in configs]
    assert len(labels) == len(set(labels))
    singles = [c for c in configs if c.mode == "single"]
    assert {(c.model["groups"], c.link) for c in singles} == {(4, "loopback"), (1, "loopback")}  # DeCNN, plain
    splits = {(c.mode, c.devices, c.link) for c in configs if c.mode != "single"}
    assert splits == {(m, n, link) for m, n in [("branch", 2), ("branch", 4), ("modnn", 2), ("modnn", 4),
                                                ("grid", 4)] for link in ("loopback", "100mbit")}
    assert all(c.image_size == 224 for c in configs)
    assert board_share("resnet50", 2) == 0.5 and board_share("resnet34", 2) == 0.25  # 4 and 8 boards fill 2 cores


def _record(mode, devices, groups, p50, rss, predicted=None):
    return RunRecord(model="decnn_resnet50", groups=groups, width=1.5 if groups > 1 else 1.0, mode=mode,
                     devices=devices, batch=1, image_size=224, latency_ms=Latency(p50, p50, p50),
                     throughput_ips=1e3 / p50,
                     bytes_per_image=1024.0, bytes_per_image_per_point=[1024.0], exchanges_per_batch=3,
                     params_per_rank=[1] * devices, peak_rss_per_rank=[rss * MB] * devices, cpu_fraction=0.5,
                     link="loopback", predicted_latency_ms=predicted, predicted_compute_ms=predicted,
                     predicted_transfer_ms=0.0 if predicted else None)


def test_speedups_are_taken_within_each_round_and_memory_counts_above_an_idle_device(tmp_path):
    by_label = {c.label(): c for c in runs(["resnet50"], [1], ["loopback"])}
    rounds = {  # round 2 is slow for everyone: its ratios stay those of round 1
        "decnn50 single x1 b1 @loopback": [_record("single", 1, 4, 100, 164), _record("single", 1, 4, 200, 164)],
        "decnn50 branch x2 b1 @loopback": [_record("branch", 2, 4, 40, 114, 36),
                                           _record("branch", 2, 4, 80, 114, 44)],
        "resnet50 single x1 b1 @loopback": [_record("single", 1, 1, 150, 200), _record("single", 1, 1, 300, 200)],
        "resnet50 modnn x2 b1 @loopback": [_record("modnn", 2, 1, 100, 200), _record("modnn", 2, 1, 200, 200)],
    }
    records = {r.name: r for r in rows([by_label[k] for k in rounds], rounds, idle_bytes=64 * MB)}
    decnn, modnn = records["decnn50 branch"], records["resnet50 modnn"]
    assert decnn.speedup_vs_one_device == pytest.approx(2.5) and modnn.speedup_vs_one_device == pytest.approx(1.5)
    assert decnn.rss_above_idle_vs_whole == pytest.approx((114 - 64) / (164 - 64))
    assert modnn.rss_above_idle_vs_whole == pytest.approx(1.0)  # every device holds the whole model
    assert decnn.latency_ms.p50 == 60 and decnn.predicted_latency_ms == 40  # medians over the rounds
    row = ("| 224 | DeCNN | resnet50 g4 x1.5 | 2 | 0.5 | loopback | 1 | 60.0 | 2.50x | 3 | 1 | 114 | 0.50 | 40.0 "
           "| -33.3% |")
    assert row in table(list(records.values()))
    assert "| 224 | 2 | loopback | 1 | fp32 | 60.0 | 150.0 | – | 2.50x | – |" in versus(list(records.values()))
    out = tmp_path / "scaling.json"
    write(list(records.values()), None, {"started": "now", "command": "decnn bench scaling"}, out, None)
    assert len(json.loads(out.read_text())["records"]) == 4 and out.with_suffix(".png").stat().st_size > 0


def test_bad_arguments_are_one_line_and_exit_2():
    run = subprocess.run([sys.executable, "-m", "decnn.cli", "bench", "scaling", "--family", "resnet50", "--cpu",
                          "0.9"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "4 boards of 0.9 core need 3.6 cores" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.netns
def test_the_command_runs_every_method_on_emulated_boards_at_tiny_size(tmp_path):
    ok, reason = quotas_available()
    if not ok:
        pytest.skip(reason)
    out = tmp_path / "scaling.json"
    run = subprocess.run([sys.executable, "-m", "decnn.cli", "bench", "scaling", "--family", "tiny", "--rounds", "1",
                          "--images", "2", "--link", "loopback", "--no-validate", "--out", str(out), "--log-dir",
                          str(tmp_path / "runs")], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    records = json.loads(out.read_text())["records"]
    assert {(r["mode"], r["devices"]) for r in records} == {("single", 1), ("branch", 2), ("modnn", 2), ("grid", 4)}
    splits = [r for r in records if r["devices"] > 1]
    assert all(r["cpu_fraction"] == 0.5 and r["predicted_latency_ms"] > 0 for r in splits)
    assert all(r["max_abs_diff"] <= 1e-4 for r in splits if "max_abs_diff" in r)
    assert out.with_suffix(".png").exists() and (tmp_path / "runs").exists()
