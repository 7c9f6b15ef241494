"""The report generator replaces only its marked blocks."""

import subprocess
import sys

import pytest

from decnn.bench.paper import accuracy_table, replace_block
from decnn.common.record import RunRecord


def test_only_the_named_block_is_replaced():
    text = "intro\n<!-- decnn:begin bench -->\nold\n<!-- decnn:end bench -->\nprose stays\n"
    out = replace_block(text, "bench", "| new |")
    assert out == "intro\n<!-- decnn:begin bench -->\n| new |\n<!-- decnn:end bench -->\nprose stays\n"
    assert replace_block(out, "bench", "| new |") == out  # idempotent


def test_missing_block_is_a_clear_error():
    with pytest.raises(ValueError, match="no block 'accuracy'"):
        replace_block("nothing here", "accuracy", "x")


def test_accuracy_table_lists_training_runs_only():
    runs = {
        "train/a": RunRecord(mode="train", model="decnn_resnet34", groups=4, width=1.5, devices=1, top1=96.29,
                             params_per_device_mb=756322 * 4 / 2**20),
        "bench/b": RunRecord(mode="branch", model="decnn_resnet34", groups=4, width=1.5, devices=2,
                             params_per_device_mb=23.2),
    }
    table = accuracy_table(runs)
    assert "| train/a | decnn_resnet34 | 4 | 1.5 | 96.29 | 0.76 |" in table and "bench/b" not in table


def test_a_missing_runs_folder_is_one_line_exit_2_and_leaves_the_report(tmp_path):
    report = tmp_path / "README.md"
    report.write_text("<!-- decnn:begin accuracy -->\nold\n<!-- decnn:end accuracy -->\n")
    res = subprocess.run([sys.executable, "-m", "decnn.bench.paper", "--runs", str(tmp_path / "nowhere"),
                          "--report", str(report)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"error: no runs folder at {tmp_path / 'nowhere'}; train.py and infer_distributed.py write to runs/"]
    assert "old" in report.read_text()
