"""The front door: ``decnn <job>`` reaches every job, each with --help and examples, and the same exit codes."""

import subprocess
import sys
from pathlib import Path

import pytest

from decnn.cli import BENCH_TOOLS, JOBS, main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [[job] for job in JOBS] + [["bench", tool] for tool in BENCH_TOOLS]


def _exit_code(argv) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


def test_help_lists_every_job(capsys):
    assert _exit_code(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n  {job} " in out for job in JOBS) and all(tool in out for tool in BENCH_TOOLS)


def test_an_unknown_job_is_a_usage_error(capsys):
    assert _exit_code(["nonsense"]) == 2
    assert "error: unknown job 'nonsense'; choose one of train, infer" in capsys.readouterr().err
    assert _exit_code([]) == 2


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_every_job_has_help_with_examples(argv, capsys):
    assert _exit_code([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: decnn {' '.join(argv)}"), out[:200]
    examples = out[out.index("examples:"):]
    assert f"decnn {' '.join(argv)}" in examples, examples  # the examples use the front door


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_every_job_exits_2_on_a_usage_error(argv, capsys):
    assert _exit_code([*argv, "--no-such-flag"]) == 2  # or a required argument missing: a usage error either way
    assert f"decnn {' '.join(argv)}: error: " in capsys.readouterr().err


@pytest.mark.parametrize("script", ["train.py", "infer_distributed.py"])
def test_the_root_scripts_are_the_same_commands(script):
    res = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith(f"usage: {script}"), res.stderr
    assert "examples:" in res.stdout
