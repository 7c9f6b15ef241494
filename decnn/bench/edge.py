"""The benchmark's device-runtime rows (``decnn edge``: ONNX Runtime + MPI, no torch on the devices).

The models are the torch rows' very models (the same seeded random init), exported once per benchmark with
``decnn export --onnx``. On loopback, ``decnn edge`` starts the devices on this host (MPI over shared
memory); over an emulated link, mpiexec starts each device in its host's namespace: MPICH's launcher reaches
other hosts through ssh, and ``-launcher-exec`` replaces ssh with a script called as ``SCRIPT [-x] HOST
COMMAND...`` that runs COMMAND inside HOST's namespace on a core of its own (host i: core i, as the torch
rows over links are pinned), so the activations cross the shaped veth links over TCP as between boards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from decnn.bench.configurations import BenchConfig
from decnn.bench.infer_runs import RunFailed, check
from decnn.common.record import RunRecord
from decnn.emulation.links import EmulatedLink
from decnn.wire.spatial import SPATIAL_MODES


def export_kind(config: BenchConfig) -> tuple:
    """Which export a device-runtime row runs: its model's spatial export (the plain model: whole, modnn and grid
    rows alike), or the DeCNN's branch export for its device count (1 for the whole model)."""
    model = tuple(sorted(config.model.items()))
    if config.mode in SPATIAL_MODES or (config.mode == "single" and config.model["groups"] == 1):
        return model, config.image_size, "spatial"
    return model, config.image_size, f"branch{1 if config.mode == 'single' else config.devices}"


def export_models(configs: list[BenchConfig], folder: Path) -> dict[tuple, Path]:
    """Export folders for the edge configurations, by :func:`export_kind`: the torch rows' weights."""
    from decnn.common.checkpoint import save_checkpoint
    from decnn.deploy.export import main as export_main
    from decnn.inference.settings import InferConfig
    from decnn.inference.spec import resolve_model

    folders = {}
    for kind in sorted({export_kind(c) for c in configs if c.runtime == "edge"}, key=str):
        model, size, how = kind
        m = dict(model)
        spec = resolve_model(InferConfig(random_init=True, model=m["model"], groups=m["groups"], width=m["width"],
                                         stem=m.get("stem")))
        name = "-".join(f"{v}" for _, v in model) + f"-{size}"
        checkpoint = folder / f"{name}.pt"
        if not checkpoint.exists():
            save_checkpoint(checkpoint, {"model": spec.build().state_dict(), "model_name": spec.name,
                                         "model_kwargs": spec.kwargs, "config": {"data": {"image_size": size}}})
        out = folder / f"{name}-{how}"
        args = (["--mode", "modnn", "--devices", "1"] if how == "spatial"
                else ["--devices", how.removeprefix("branch")])
        with contextlib.redirect_stdout(io.StringIO()):
            code = export_main([str(checkpoint), *args, "--out", str(out), "--onnx"])
        if code:
            raise RunFailed(f"decnn export of {name} ({how}) failed")
        folders[kind] = out
    return folders


def run_edge(config: BenchConfig, folders: dict[tuple, Path], link: EmulatedLink | None, images: int, warmup: int,
             timeout: float) -> RunRecord:
    """One ``decnn edge`` run of ``config``; its record."""
    folder = folders[export_kind(config)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        args = ["--batch", str(config.batch), "--images", str(images), "--warmup", str(warmup), "--threads", "1",
                "--timeout", str(timeout), "--out", str(out)]
        if config.mode == "branch":
            args += ["--overlap", str(config.overlap), "--exchange-dtype", config.exchange_dtype]
        elif config.mode in SPATIAL_MODES:
            args += ["--mode", config.mode]
        if config.mode != "single" and config.overlap == 1:
            args += ["--predict"]  # the cost model, from parts measured on these very devices
        if link is None:
            argv = [sys.executable, "-m", "decnn.edge.launch", str(folder), *args]
            argv += ["--single"] if config.mode == "single" else ["--devices", str(config.devices)]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout * 4 + 120)
        else:
            script = write_launcher_exec(link, Path(tmp) / "netns-exec")
            proc = link.run(0, edge_argv(link, script, folder, args), capture_output=True, text=True,
                            timeout=timeout * 4 + 120)
        check(proc, proc.stdout + proc.stderr, config)
        record = RunRecord.from_dict(json.loads(out.read_text()))
    # The export's checkpoint is this benchmark's temporary copy of the torch rows' random init.
    return dataclasses.replace(record, checkpoint=None)


IDLE = ("from mpi4py import MPI; import numpy, onnxruntime; import decnn.edge.device_run; "
        "from decnn.common.timing import peak_rss_bytes; print(peak_rss_bytes())")


def idle_rss_bytes() -> int:
    """The peak RSS of an idle device of the runtime: its imports, joined to MPI, no graph loaded."""
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    return int(subprocess.run([mpiexec, "-n", "1", sys.executable, "-c", IDLE], capture_output=True, text=True,
                              check=True).stdout)


def write_launcher_exec(link: EmulatedLink, path: str | Path) -> Path:
    """An executable script at ``path`` that runs a command in the namespace of the host with its address."""
    cores = sorted(os.sched_getaffinity(0))
    cases = "\n".join(f"  {h.address}) ns={h.netns} core={cores[h.index % len(cores)]};;" for h in link.hosts)
    path = Path(path)
    path.write_text(
        "#!/bin/sh\n"
        "# mpiexec -launcher ssh -launcher-exec THIS: called as THIS [-x] HOST COMMAND...\n"
        '[ "$1" = "-x" ] && shift\n'
        "host=$1; shift\n"
        f"case $host in\n{cases}\n"
        '  *) echo "no emulated host $host" >&2; exit 1;;\n'
        "esac\n"
        'exec ip netns exec "$ns" taskset -c "$core" sh -c "$*"\n'
    )
    path.chmod(0o755)
    return path


def tx_bytes(link: EmulatedLink) -> list[int]:
    """Bytes each host has sent through its link so far (the veth's counter inside its namespace)."""
    return [int(link.run(h.index, ["cat", f"/sys/class/net/{h.ifname}/statistics/tx_bytes"], capture_output=True,
                         text=True, check=True).stdout) for h in link.hosts]


def edge_argv(link: EmulatedLink, script: Path, directory: str | Path, run_args: list[str]) -> list[str]:
    """``decnn edge`` over the link's hosts, one device each, through ``script``."""
    hosts = ",".join(h.address for h in link.hosts)
    return [sys.executable, "-m", "decnn.edge.launch", str(directory), "--hosts", hosts, "--launcher-exec", str(script),
            "--iface", link.hosts[0].ifname, *run_args]
