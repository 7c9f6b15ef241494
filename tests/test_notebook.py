"""notebooks/compare.ipynb runs top to bottom on logged runs."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from decnn.common.logger import make_logger
from decnn.common.record import Latency, RunRecord

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "compare.ipynb"


def test_compare_notebook_executes(tmp_path, monkeypatch):
    model = {"model": "decnn_resnet34", "groups": 4, "width": 1.5}
    with make_logger(tmp_path / "train" / "a") as log:
        log.hparams(model, {"hparam/best_top1": 60.0})
    with make_logger(tmp_path / "infer" / "b") as log:
        infer = RunRecord(**model, mode="branch", devices=2, link="loopback", latency_ms=Latency(40.0, 41.0, 42.0))
        infer.log_hparams(log)
    monkeypatch.setenv("DECNN_RUNS", str(tmp_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    resources = {"metadata": {"path": str(tmp_path)}}
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources=resources).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("2 runs under" in o.get("text", "") for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
