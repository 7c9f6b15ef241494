"""docs/deploy.md, from a laptop to the boards: every command of its ```bash blocks is a real invocation, parsed
by the job's own parser down to the arguments a deploy passes on to each device's run, and the hosts it names."""

import re
import shlex
from pathlib import Path

import pytest

from decnn.bench.deploy import parser as bench_deploy_parser
from decnn.cluster.deploy import _run_parser
from decnn.cluster.deploy import parser as deploy_parser
from decnn.cluster.hosts import parse_hosts
from decnn.cluster.plan import parser as plan_hosts_parser
from decnn.deploy.export import parser as export_parser
from decnn.edge.launch import parser as edge_parser

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "deploy.md"
OTHER_TOOLS = {"pip"}  # not decnn's: only the program is checked


def commands(text: str) -> list[list[str]]:
    """Each command line of the ```bash blocks of ``text``, split as the shell splits it, comments dropped."""
    out = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            while argv and (argv[0] == "sudo" or re.fullmatch(r"[A-Z_]+=\S*", argv[0])):
                argv = argv[1:]
            if argv:
                out.append(argv)
    return out


def check_device_run(directory: str, run_args: list[str]) -> None:
    """Arguments that decnn deploy and decnn edge pass on to each device's run."""
    _run_parser().parse_args([directory, *run_args])


def check_decnn(args: list[str]) -> None:
    job, rest = args[0], args[1:]
    if job == "export":
        export_parser().parse_args(rest)
    elif job == "deploy":
        parsed, run_args = deploy_parser().parse_known_args(rest)
        assert bool(parsed.plan) != bool(parsed.hosts), "decnn deploy takes --hosts or --plan"
        if parsed.hosts:
            parse_hosts(parsed.hosts)
        check_device_run(parsed.directory, run_args)
    elif job == "plan":
        assert "--hosts" in rest, "decnn plan without --hosts is not a deploy command"
        parse_hosts(plan_hosts_parser().parse_args(rest).hosts)
    elif job == "edge":
        parsed, run_args = edge_parser().parse_known_args(rest)
        check_device_run(parsed.directory, run_args)
    elif job == "bench" and rest[:1] == ["deploy"]:
        bench_deploy_parser().parse_args(rest[1:])
    else:
        pytest.fail(f"decnn {' '.join(args)}: no parser known here for it")


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))


def test_every_command_of_the_guide_parses():
    found = commands(GUIDE.read_text())
    assert {"export", "deploy", "plan"} <= {argv[1] for argv in found if argv[0].endswith("decnn")}
    for argv in found:
        tool = argv[0]
        if tool == "decnn" or tool.endswith("/bin/decnn"):
            check_decnn(argv[1:])
        elif tool == "make":
            assert set(argv[1:]) <= make_targets(), f"{' '.join(argv)}: no such target in the Makefile"
        else:
            assert tool in OTHER_TOOLS, f"{' '.join(argv)}: not a command this test knows"


def test_a_wrong_command_does_not_parse():
    with pytest.raises(ValueError, match="--batchh"):  # passed on to the devices' run, which does not know it
        check_decnn(["deploy", "shards/", "--hosts", "a,b", "--batchh", "8"])
    with pytest.raises(SystemExit):
        check_decnn(["export", "best.pt", "--devices", "2"])  # no --out
    with pytest.raises(SystemExit):
        check_decnn(["plan", "--hosts", "a,b", "best.pt"])  # no --out
    with pytest.raises(ValueError):
        check_decnn(["deploy", "shards/", "--hosts", "a,a"])
