"""TensorBoard as a user opens it: a fresh server, the HPARAMS tab's data through the HTTP requests its page
makes, and a screenshot of the tab in headless Chromium.

    python tests/hparams_ui.py runs paper/hparams_tab.png      # `make screenshot`, after `make demo`
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def tensorboard(logdir: str | Path, timeout: float = 60.0):
    """A fresh ``tensorboard --logdir`` on a free local port, stopped on leaving; yields its URL once it
    answers."""
    port = _free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
                             "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}/data/runs", timeout=5).close()
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"tensorboard did not start: {log.read().decode()[-2000:]}") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def experiment(url: str) -> dict:
    """What the HPARAMS tab asks for first: the experiment, its columns."""
    return _post(f"{url}/data/plugin/hparams/experiment", {"experimentName": "", "includeMetrics": True})


def session_groups(url: str, exp: dict) -> list[dict]:
    """The rows of the HPARAMS table, with every column of ``exp``, as the tab asks for them."""
    cols = [{"hparam": h["name"], "includeInResult": True} for h in exp.get("hparamInfos", [])]
    cols += [{"metric": m["name"], "includeInResult": True} for m in exp.get("metricInfos", [])]
    body = {"experimentName": "", "allowedStatuses": STATUSES, "colParams": cols, "startIndex": 0,
            "sliceSize": 1000, "includeMetrics": True}
    return _post(f"{url}/data/plugin/hparams/session_groups", body).get("sessionGroups", [])


def read_hparams(logdir: str | Path, sessions: int, timeout: float = 60.0) -> tuple[dict, list[dict]]:
    """The experiment and rows a fresh TensorBoard serves for ``logdir``, once it has read all ``sessions``
    (it loads runs in the background)."""
    with tensorboard(logdir) as url:
        deadline = time.monotonic() + timeout
        while True:
            exp = experiment(url)
            groups = session_groups(url, exp)
            if len(groups) >= sessions or time.monotonic() > deadline:
                return exp, groups
            time.sleep(0.5)


def columns(exp: dict) -> tuple[list[str], list[str]]:
    """The experiment's hparam and metric columns, by name and tag."""
    return [h["name"] for h in exp.get("hparamInfos", [])], [m["name"]["tag"] for m in exp.get("metricInfos", [])]


def row(group: dict) -> dict:
    """One table row: hparams and metric values by name."""
    values = dict(group["hparams"])
    values.update({m["name"]["tag"]: m["value"] for m in group.get("metricValues", [])})
    return values


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(logdir: str | Path, out: str | Path, size: str = "1920,640") -> Path:
    """A PNG of the HPARAMS tab's table for ``logdir``, as headless Chromium renders it."""
    browser = chromium()
    if browser is None:
        raise RuntimeError("no chromium found: sudo apt-get install chromium")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tensorboard(logdir) as url, tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={size}", "--virtual-time-budget=15000",
                        f"--screenshot={out}", f"{url}/#hparams"],
                       check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tests/hparams_ui.py RUNS_DIR OUT.png")
    print(screenshot(sys.argv[1], sys.argv[2]))
