"""The docs cannot drift from the code: every command in a ``bash`` block of README.md and docs/*.md, and every
inline `decnn <job> ...` command, parses against the real parser of what it runs; every Python block compiles;
every link to a file holds."""

import argparse
import contextlib
import importlib
import re
import shlex
from pathlib import Path

import pytest

from decnn.cli import BENCH_TOOLS, JOBS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = {"train.py": "decnn.train.__main__", "infer_distributed.py": "decnn.jobs.infer"}
ALLOWED = {"tensorboard", "pip", "git", "cd"}  # other programs a page may show; their own parsers are theirs
_FENCE = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
_INLINE = re.compile(r"`((?:sudo )?(?:\.venv/bin/)?decnn\s+([\w-]+)[^`]*)`")  # (the command, its job)
_LINK = re.compile(r"\]\(([^)#\s]+)\)")


class Parsed(BaseException):
    """Raised by argparse once a command line parsed: nothing after the parse runs."""


def commands() -> list[tuple[str, str]]:
    """(where, command) for every command the pages show."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for block in _FENCE.findall(text):
            for line in block.replace("\\\n", " ").splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    found.append((page.name, line.strip()))
        for span, job in _INLINE.findall(text.replace("\n", " ")):
            named = span.split()[-1] == job  # `decnn train` names the job
            if job in JOBS and not named and not re.search(r"\.\.\.|\|", span):  # nor a synopsis (`a|b`)
                found.append((page.name, span))
    return found


@contextlib.contextmanager
def stop_after_parsing():
    """argparse raises :class:`Parsed` after a successful parse (a usage error still exits 2)."""
    known, full = argparse.ArgumentParser.parse_known_args, argparse.ArgumentParser.parse_args
    inside = []

    def parse_known_args(self, args=None, namespace=None):
        out = known(self, args, namespace)
        if not inside:
            raise Parsed(out)
        return out

    def parse_args(self, args=None, namespace=None):
        inside.append(True)
        try:
            full(self, args, namespace)
        finally:
            inside.pop()
        raise Parsed()

    argparse.ArgumentParser.parse_known_args, argparse.ArgumentParser.parse_args = parse_known_args, parse_args
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_known_args, argparse.ArgumentParser.parse_args = known, full


def parse_module(module: str, args: list[str]) -> None:
    with stop_after_parsing(), pytest.raises((Parsed, SystemExit)) as stopped:
        importlib.import_module(module).main(args)
    assert stopped.type is Parsed or stopped.value.code == 0  # --help exits 0; a usage error 2


def check(tokens: list[str]) -> None:
    """Parse ``tokens`` as what it runs would; fail for a program no test can check."""
    while tokens and re.fullmatch(r"\w+=\S*", tokens[0]):  # VAR=value prefixes
        tokens = tokens[1:]
    if tokens[:1] == ["sudo"]:
        tokens = tokens[1:]
    program, args = Path(tokens[0]).name, tokens[1:]
    if program == "decnn":
        job = args[0]
        assert job in JOBS, f"unknown job {job!r}"
        if job == "bench" and args[1:2] and args[1] in BENCH_TOOLS:
            return parse_module(BENCH_TOOLS[args[1]], args[2:])
        return parse_module(JOBS[job], args[1:])
    if program in ("python", "python3"):
        if args[0] == "-m":
            return parse_module(args[1], args[2:])
        assert args[0] in SCRIPTS, f"unknown script {args[0]}"
        return parse_module(SCRIPTS[args[0]], args[1:])
    if program == "torchrun":
        from torch.distributed.run import get_args_parser

        parsed = get_args_parser().parse_args(args)
        script = ["-m", parsed.training_script] if parsed.module else [parsed.training_script]
        return check(["python", *script, *parsed.training_script_args])
    if program == "mpiexec":
        return check(args[args.index("python"):])
    if program == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
        assert set(args) <= set(targets), f"no make target {set(args) - set(targets)}"
        return None
    assert program in ALLOWED, f"no test can check {program!r}: show a decnn command, or allow the program"
    return None


@pytest.mark.parametrize(("page", "command"), commands())
def test_every_command_in_the_docs_parses(page, command):
    check(shlex.split(command, comments=True))


def test_the_pages_show_commands_and_the_readme_is_short():
    pages = {page for page, _ in commands()}
    assert {"README.md", "infer.md", "edge.md", "bench.md", "train.md"} <= pages
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_python_block_compiles(page):
    for block in re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M):
        compile(block, str(page), "exec")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_to_a_file_holds(page):
    missing = [link for link in _LINK.findall(page.read_text())
               if not link.startswith("http") and not (page.parent / link).exists()]
    assert not missing


def test_a_wrong_option_fails_the_check(capsys):
    for command, message in [("decnn infer --random-init --devise 2", "unrecognized arguments: --devise"),
                             ("torchrun --nnodes 2 infer_distributed.py --random-init --bacth 1", "--bacth"),
                             ("python -m decnn.edge.device_run shards/ --batch 0", "argument --batch")]:
        with pytest.raises(AssertionError):
            check(shlex.split(command))
        assert message in capsys.readouterr().err
    with pytest.raises(AssertionError, match="no make target"):
        check(shlex.split("make tests"))


@pytest.mark.parametrize("job", ["decnn.edge.launch", "decnn.cluster.deploy"])
def test_decnn_edge_and_deploy_help_lists_every_option_of_a_devices_run(job):
    from decnn.edge.device_run import parser as run_parser

    options = set(re.findall(r"(--[a-z][a-z-]*)", run_parser().format_help()))
    assert {"--batch", "--verify", "--images", "--exchange-dtype", "--overlap", "--timeout", "--out"} <= options
    shown = set(re.findall(r"(--[a-z][a-z-]*)", importlib.import_module(job).parser().format_help()))
    assert options - {"--single"} <= shown  # a deploy never runs the whole model alone
