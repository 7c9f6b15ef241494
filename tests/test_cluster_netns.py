"""decnn deploy onto a small cluster: boards that are network namespaces with their own sshd (Debian's
openssh-server, keys made here) and their own /root, one slowed by a CPU quota, joined by emulated links
(decnn.emulation.ssh_boards). From nothing to a verified run on 2 and 3 boards, each holding only its device's
files; a board cut off in the middle of a deploy is one line naming it, and the same command completes it."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
from conftest import randomize_

from decnn.cluster.environment import Platform, Wheels
from decnn.cluster.facts import ARCHITECTURES
from decnn.cluster.files import device_files
from decnn.common.checkpoint import save_checkpoint
from decnn.deploy.export import main as export_main
from decnn.emulation.netns import netns_names
from decnn.emulation.ssh_boards import SshBoards, ssh_boards_available
from decnn.wire.export_format import read_manifest

pytestmark = [pytest.mark.slow, pytest.mark.netns]
PREFIX = "decnnsshtest"
DECNN = str(Path(sys.executable).parent / "decnn")


@pytest.fixture(scope="module", autouse=True)
def boards_wheels():
    """The boards' wheels, fetched here (the laptop's namespace reaches no package index; a deploy finds them)."""
    ok, reason = ssh_boards_available()
    if not ok:
        pytest.skip(reason)
    said = subprocess.run(["/usr/bin/python3", "-c", "import platform, sys; print(platform.machine(), "
                           "*sys.version_info[:2], *platform.libc_ver()[1].split('.'))"],
                          capture_output=True, text=True, check=True).stdout.split()
    machine, python, glibc = said[0], (int(said[1]), int(said[2])), (int(said[3]), int(said[4]))
    Wheels().dependencies(Platform(ARCHITECTURES[machine], python, glibc))


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """DeCNN ResNet-18 G4 x0.5 (random weights) exported for 3 devices, 0,1/2/3."""
    tmp = tmp_path_factory.mktemp("three")
    kwargs = {"width": 0.5, "num_classes": 10}
    model = randomize_(timm.create_model("decnn_resnet18", **kwargs))
    save_checkpoint(tmp / "best.pt", {"model": model.state_dict(), "model_name": "decnn_resnet18",
                                      "model_kwargs": kwargs, "config": {"data": {"image_size": 32}}})
    assert export_main([str(tmp / "best.pt"), "--placement", "0,1/2/3", "--out", str(tmp / "shards"), "--onnx"]) == 0
    return tmp / "shards"


def deploy_argv(boards: SshBoards, shards: Path, *args: str) -> list[str]:
    return [DECNN, "deploy", str(shards), "--hosts", ",".join(boards.hosts), "--ssh-config", str(boards.ssh_config),
            "--images", "8", "--threads", "1", "--no-pin-cores", *args]


def holds_only_its_part(boards: SshBoards, shards: Path) -> None:
    """Every board holds its device's files of the export, byte for byte, and no other device's, no whole model
    and no torch shard anywhere in its home."""
    manifest = read_manifest(shards)
    for d, home in enumerate(boards.homes):
        (export,) = (home / ".decnn" / "exports").iterdir()
        mine = device_files(shards, manifest, d)
        held = sorted(p.name for p in export.iterdir() if not p.name.startswith(("inputs", "verified-")))
        assert held == sorted(mine)
        assert all((export / n).read_bytes() == (shards / n).read_bytes() for n in mine)
        names = [p.name for p in home.rglob("*")]
        others = [n for n in names if re.match(r"device\d+\.", n) and not n.startswith(f"device{d}.")]
        assert others == [] and "model.onnx" not in names and not any(n.endswith(".pt") for n in names)


def left_behind() -> list[str]:
    sshd = subprocess.run(["pgrep", "-f", "decnn-ssh-boards-"], capture_output=True, text=True).stdout.split()
    return [n for n in netns_names() if n.startswith(PREFIX)] + sshd


def test_two_boards_from_nothing_a_board_cut_off_mid_deploy_and_the_retry(onnx_export):
    shards = onnx_export[1] / "shards"
    with SshBoards([1.0, 0.4], link="50mbit", name_prefix=PREFIX) as boards:
        argv = deploy_argv(boards, shards, "--verify")
        proc = boards.laptop_popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wheels = boards.homes[1] / ".decnn" / "wheels"
        deadline = time.monotonic() + 120
        while not (wheels.is_dir() and any(wheels.iterdir())) and proc.poll() is None:
            assert time.monotonic() < deadline, "the deploy never began to copy the wheels to board 1"
            time.sleep(0.05)
        boards.cut(1)  # in the middle of copying 57 MiB of wheels at 50 Mbit/s
        _, err = proc.communicate(timeout=300)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert proc.returncode == 1 and len(errors) == 1, err
        assert errors[0].startswith("error: host 1 (root@board1): unreachable while copying the wheels")
        assert "then run the same command again" in errors[0]
        boards.reconnect(1)
        start = time.monotonic()
        retry = boards.laptop(argv, capture_output=True, text=True, timeout=600)
        assert retry.returncode == 0, retry.stderr
        assert "verified (bound 0.0001)" in retry.stdout and "pip warned" not in retry.stdout
        assert "decnn[edge] already installed" in retry.stdout.split("host 1")[0]  # board 0 finished the first time
        print(f"retry after the cut: {time.monotonic() - start:.1f} s\n{retry.stdout}")
        holds_only_its_part(boards, shards)
        again = boards.laptop(deploy_argv(boards, shards), capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr
        assert again.stdout.count("already installed") == 2 and again.stdout.count("copying 0 (0.00 MiB)") == 2
    assert left_behind() == []


def test_three_boards_from_nothing_verified_each_holding_its_part(three):
    with SshBoards([0.5, 0.5, 0.5], name_prefix=PREFIX) as boards:
        start = time.monotonic()
        run = boards.laptop(deploy_argv(boards, three, "--verify"), capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        assert "3 device(s)" in run.stdout and "verified (bound 0.0001)" in run.stdout
        print(f"3 boards from nothing: {time.monotonic() - start:.1f} s\n{run.stdout}")
        holds_only_its_part(boards, three)
    assert left_behind() == []
