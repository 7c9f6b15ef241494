"""The demo's final table and plot: trained-and-timed small models kept apart from timed-only full-size ones."""

import json

from decnn.demo import BENCH_LABELS, TRAINED_RUNS, plot, summarize


def _infer(top1, p50):
    return {"top1": top1, "latency_ms": {"p50": p50}, "params_per_rank": [2**20, 2**20]}


def test_summary_separates_trained_small_from_timed_full_size_and_names_resnet34(tmp_path):
    for i, name in enumerate(TRAINED_RUNS):
        (tmp_path / f"infer-{name.replace(' ', '-')}.json").write_text(json.dumps(_infer(96.0 + i, 10.0 + i)))
    records = [{"name": n, "link": "loopback", "overlap": 1, "latency_ms": {"p50": 40.0},
                "latency_ratio_vs_resnet34": 2.5} for n in BENCH_LABELS]
    (tmp_path / "bench.json").write_text(json.dumps({"records": records}))
    text = summarize(tmp_path)
    trained, full = text.split("Timed only")
    assert "| ResNet-34, 1 device | 98.0 | 12.0 |" in trained and "DeCNN ResNet-34 G4, 2 devices" in trained
    assert "g1" not in text and "| ResNet-34, 1 device | 40.0 | 2.50x |" in full
    plot(tmp_path, tmp_path / "summary.png")
    assert (tmp_path / "summary.png").stat().st_size > 0
