"""Run one benchmark configuration through ``infer_distributed``'s command line and read its JSON report.

Local runs start N processes through the elastic launcher (``--devices N``) on loopback; runs over an
emulated link start one ``torchrun`` per network namespace, so activations cross a shaped veth over TCP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from decnn.bench.configurations import BenchConfig
from decnn.common.record import RunRecord
from decnn.emulation.links import EmulatedLink

INFER = [sys.executable, "-m", "decnn.jobs.infer"]


class RunFailed(RuntimeError):
    """A benchmark run exited with an error; the message holds the tail of its output."""


def _common(config: BenchConfig, images: int, warmup: int, timeout: float, out: Path) -> list[str]:
    return [*config.infer_args(), "--num-images", str(images), "--warmup", str(warmup), "--timeout", str(timeout),
            "--out", str(out), "--log-dir", ""]


def check(proc: subprocess.CompletedProcess | subprocess.Popen, output: str, config: BenchConfig) -> None:
    if proc.returncode:
        tail = "\n".join(output.strip().splitlines()[-30:])
        raise RunFailed(f"{config.label()} exited with code {proc.returncode}:\n{tail}")


def run_local(config: BenchConfig, images: int, warmup: int, timeout: float) -> RunRecord:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        argv = [*INFER, *_common(config, images, warmup, timeout, out)]
        if config.devices > 1:
            argv += ["--devices", str(config.devices)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout * 4 + 120)
        check(proc, proc.stdout + proc.stderr, config)
        return RunRecord.from_dict(json.loads(out.read_text()))


def run_over_link(config: BenchConfig, link: EmulatedLink, port: int, images: int, warmup: int,
                  timeout: float) -> RunRecord:
    """One torchrun per host of ``link``; rank 0 (host 0) writes the report.

    Each host's processes get cores of their own (host i: core i), as the local runs' pinning gives them.
    """
    cores = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        args = ["-m", "decnn.jobs.infer", *_common(config, images, warmup, timeout, out)]
        procs = [
            link.popen(i, ["taskset", "-c", str(cores[i % len(cores)]),
                           *link.torchrun_argv(i, args, port=port, run_id=f"bench{port}")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(config.devices)
        ]
        outputs = [p.communicate(timeout=timeout * 4 + 120)[0] for p in procs]
        for p, output in zip(procs, outputs):
            check(p, output, config)
        return RunRecord.from_dict(json.loads(out.read_text()))
