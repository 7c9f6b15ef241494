"""decnn deploy and decnn plan --hosts, fast: each board's files, content-hash skipping, failures in one line, the
deploy plan (--check), a deploy's run and verification through stand-ins for ssh and scp (tests/fake_openssh.py),
the placement's arithmetic, the board-side profile, and decnn[edge]'s metadata. Against real sshd's in network
namespaces: tests/test_cluster_netns.py (slow)."""

import json
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from fake_openssh import write_fakes

from decnn.cluster.deploy import main as deploy
from decnn.cluster.environment import Platform, Wheels, edge_extra, requirements
from decnn.cluster.facts import Facts, MiB, check, probe
from decnn.cluster.files import device_files, sha256, transfer
from decnn.cluster.hosts import Host, Ssh, failure, parse_hosts
from decnn.cluster.placement import BoardProfile, Links, Traffic, rank, sent_bytes
from decnn.cluster.session import Session
from decnn.wire.export_format import read_manifest

EDGE = {"numpy", "onnxruntime", "mpi4py", "mpich"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The laptop's cache (XDG_CACHE_HOME) of these tests: decnn's wheel is built into it once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def stamp(cache):
    """What an installed environment's stamp says when it holds this source tree's decnn."""
    return Session([], Ssh(), Wheels(cache / "decnn" / "wheels")).stamp


@pytest.fixture
def boards(tmp_path, monkeypatch, cache):
    """Two fake boards, ``a`` and ``b`` (homes under FAKE_BOARDS), reached through the stand-in ssh and scp."""
    monkeypatch.setenv("PATH", f"{write_fakes(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_BOARDS", str(tmp_path / "boards"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    for name in ("a", "b"):
        (tmp_path / "boards" / name).mkdir(parents=True)
    return tmp_path / "boards"


def installed(home: Path, stamp: dict) -> None:
    """Make ``home``'s board hold decnn[edge] as a deploy installs it (its Python this machine's)."""
    env = home / ".decnn" / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (env / "bin" / "python").chmod(0o755)
    (env / "bin" / "hydra_pmi_proxy").symlink_to(Path(sys.executable).parent / "hydra_pmi_proxy")
    (env / "decnn-env.json").write_text(json.dumps(stamp))


def held(home: Path) -> list[str]:
    """The files a board holds of exports, by name."""
    return sorted(p.name for p in (home / ".decnn" / "exports").glob("*/*"))


def test_a_board_receives_only_its_device_s_files(onnx_export):
    shards = onnx_export[1] / "shards"
    manifest = read_manifest(shards)
    zero, one = device_files(shards, manifest, 0), device_files(shards, manifest, 1)
    assert zero == ["manifest.json", "device0.plans.json", *[f"device0.seg{i}.onnx" for i in range(4)],
                    "device0.head.onnx", "device0.tail.onnx"]
    assert one == ["manifest.json", "device1.plans.json", *[f"device1.seg{i}.onnx" for i in range(4)],
                   "device1.head.onnx"]
    assert all((shards / name).is_file() for name in zero + one)
    spatial = {"mode": "modnn", "graphs": {"pieces": ["piece0.onnx", "piece1.onnx"], "pool": "pool.onnx",
                                           "classifier": "classifier.onnx"}}
    for device in (0, 1):  # every graph on every board; never the whole model's
        assert device_files(shards, spatial, device) == ["manifest.json", "piece0.onnx", "piece1.onnx", "pool.onnx",
                                                         "classifier.onnx"]


def test_content_hashes_decide_what_is_copied(tmp_path):
    same, changed, absent = (tmp_path / n for n in ("same.onnx", "changed.onnx", "absent.onnx"))
    for f in (same, changed, absent):
        f.write_bytes(f.name.encode() * 100)
    there = {"same.onnx": sha256(same), "changed.onnx": sha256(same), "stray.onnx": "0" * 64}
    needed = transfer([same, changed, absent], there)
    assert needed.missing == [changed, absent]
    assert needed.missing_bytes == changed.stat().st_size + absent.stat().st_size
    assert transfer([same], there).missing == []


def _facts(**kw) -> Facts:
    base = dict(python=(3, 11, 2), machine="aarch64", libc=("glibc", "2.36"), home="/home/pi",
                memory_available=1024 * MiB, disk_free=8192 * MiB, writable=True, venv=True, index=False, cpus=4,
                environment=None, hashes={}, ssh_connection="10.0.0.1 5000 10.0.0.2 22")
    return Facts(**{**base, **kw})


@pytest.mark.parametrize("facts, said", [
    (_facts(python=(3, 9, 2)), "python3 is 3.9.2, decnn needs 3.10 or newer"),
    (_facts(machine="armv7l"), "wrong architecture: armv7l"),
    (_facts(libc=("", "")), "not glibc"),
    (_facts(venv=False), "lacks its venv module"),
    (_facts(writable=False), "permission denied: cannot write to /home/pi/.decnn"),
    (_facts(disk_free=100 * MiB), "disk full: 100 MiB free, the deploy needs 500 MiB"),
    (_facts(memory_available=50 * MiB), "50 MiB of free memory, its device needs about 200 MiB"),
])
def test_a_board_that_cannot_run_its_device_is_one_line_naming_it(facts, said):
    host = parse_hosts("pi@board0,pi@board1")[1]
    with pytest.raises(Exception) as e:
        check(host, facts, memory=200 * MiB, disk=500 * MiB)
    line = str(e.value)
    assert "\n" not in line and line.startswith("host 1 (pi@board1): ") and said in line
    check(host, _facts(), memory=200 * MiB, disk=500 * MiB)  # a board that can


@pytest.mark.parametrize("stderr, said, fix", [
    ("ssh: connect to host board1 port 22: No route to host\r\n", "unreachable while copying", "check that it is on"),
    ("Timeout, server not responding.\nscp: Connection closed\n", "unreachable while copying", "running sshd"),
    ("pi@board1: Permission denied (publickey).\n", "ssh refused the login", "ssh-copy-id pi@board1"),
    ("scp: /home/pi/.decnn/wheels/x.whl: No space left on device\n", "disk full while copying", "free space"),
    ("scp: /home/pi/.decnn/wheels: Permission denied\n", "permission denied while copying", "write to its home"),
    ("sh: 1: python3: not found\n", "no Python 3 there", "apt-get install python3 python3-venv"),
    ("Host key verification failed.\n", "host key is unknown or has changed", "connect once by hand"),
])
def test_what_ssh_and_scp_say_becomes_one_line_naming_the_host_and_what_to_do(stderr, said, fix):
    line = str(failure(Host("pi@board1", 1), "copying its files", stderr))
    assert "\n" not in line and line.startswith("host 1 (pi@board1): ")
    assert said in line and fix in line and line.endswith("then run the same command again")


def test_check_says_what_it_would_do_and_changes_nothing(onnx_export, boards, stamp, capsys):
    installed(boards / "a", stamp)
    platform = Platform.of(probe(Ssh(), Host("b", 1)))  # this machine's Python and glibc, as board b has them
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "decnn" / "wheels" / platform.key
    cache.mkdir(parents=True, exist_ok=True)  # the laptop fetched board b's wheels before
    (cache / "numpy-2.0-py3-none-any.whl").write_bytes(b"wheel")
    wheel = Wheels(cache.parents[1]).decnn()
    (cache / "complete.json").write_text(json.dumps({"requirements": [*edge_extra(wheel), *requirements(wheel)[1:]]}))
    before = sorted(p.relative_to(boards) for p in boards.rglob("*"))
    assert deploy([str(onnx_export[1] / "shards"), "--hosts", "a,b", "--check"]) == 0
    out = capsys.readouterr().out
    assert sorted(p.relative_to(boards) for p in boards.rglob("*")) == before
    a, b = out.split("host 1 (b)")
    assert "decnn[edge] already installed" in a and "would copy 9 (" in a and "device 0 (groups 0,1)" in a
    assert "install decnn[edge]" in b and "from 2 wheels fetched here" in b and "would copy 2 wheel(s)" in b
    assert "would copy 7 (" in b and "answers checked against model.onnx here" in out


def test_a_deploy_runs_verified_each_board_holding_its_part_and_a_second_copies_nothing(onnx_export, boards, stamp,
                                                                                      capsys, tmp_path):
    for name in ("a", "b"):
        installed(boards / name, stamp)
    shards = onnx_export[1] / "shards"
    argv = [str(shards), "--hosts", "a,b", "--images", "4", "--threads", "1", "--no-pin-cores"]
    assert deploy([*argv, "--out", str(tmp_path / "r.json")]) == 0
    first = capsys.readouterr().out
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["verified"] and record["top1_agreement"] == 1.0 and record["transport"] == "mpi-tcp"
    assert "copying 9 (" in first and "copying 7 (" in first
    manifest = read_manifest(shards)
    marker = [p.name for p in (boards / "a" / ".decnn" / "exports").glob("*/verified-*")]
    assert held(boards / "a") == sorted([*device_files(shards, manifest, 0), "inputs.npz", *marker])
    assert held(boards / "b") == sorted(device_files(shards, manifest, 1))  # no weights of device 0's
    assert deploy([*argv, "--check"]) == 0
    second = capsys.readouterr().out
    assert "would copy 0 (0.00 MiB), 9 already there" in second and "would copy 0 (0.00 MiB), 7 already there" in second
    assert "no verification (done before)" in second  # verified once on these hosts; nothing changed since


def test_an_unreachable_board_is_one_line_and_the_same_command_completes_after_the_fix(onnx_export, boards, stamp,
                                                                                     capsys):
    installed(boards / "a", stamp)
    (boards / "b").rmdir()  # board b is off
    argv = [str(onnx_export[1] / "shards"), "--hosts", "a,b", "--images", "2", "--threads", "1", "--no-pin-cores"]
    assert deploy(argv) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: host 1 (b): unreachable while checking it")
    assert "then run the same command again" in errors[0]
    installed(boards / "b", stamp)  # back on
    assert deploy(argv) == 0
    assert "verified (bound" in capsys.readouterr().out


@pytest.mark.parametrize("args, said", [
    ([], "name the boards"),
    (["--hosts", "a"], "exported for 2 devices, and --hosts names 1"),
    (["--hosts", "a,a"], "names a twice"),
    (["--hosts", "a,b c"], "give [user@]address per board"),
    (["--hosts", "a,b", "--single"], "--single runs the whole model on one device"),
    (["--plan"], "is not a plan written by `decnn plan --hosts`"),
])
def test_bad_input_is_one_line_and_exit_2(onnx_export, args, said, capsys):
    assert deploy([str(onnx_export[1] / "shards"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and said in err, err


def test_a_bad_option_of_the_devices_run_is_refused_before_any_board_is_touched(onnx_export, capsys):
    with pytest.raises(SystemExit) as e:
        deploy([str(onnx_export[1] / "shards"), "--hosts", "a,b", "--exchange-dtype", "fp64"])
    assert e.value.code == 2 and "argument --exchange-dtype: invalid choice: 'fp64'" in capsys.readouterr().err


def test_the_placement_arithmetic_moves_the_shuffled_channels_and_favours_the_faster_board():
    shuffle = [g * 2 + c for c in range(2) for g in range(4)]  # channel shuffle of 4 groups of 2 channels
    traffic = Traffic(permutations=[shuffle], pixels=[100], input_bytes=300, result_bytes=40)
    # Each new group takes one channel from each old group: of device 0's 4 channels, 2 stay and 2 go.
    assert sent_bytes(traffic, [[0, 1], [2, 3]], batch=2) == [[[0.0, 1600.0], [1600.0, 0.0]]]
    assert sent_bytes(traffic, [[0, 1, 2], [3]], batch=1) == [[[0.0, 400.0], [400.0, 0.0]]]
    fast = BoardProfile("fast", [[k * 0.010, k * 0.010, 0.001] for k in range(1, 5)],
                        [k * 50 * MiB for k in range(1, 5)], 1024 * MiB, 4)
    slow = BoardProfile("slow", [[k * 0.025, k * 0.025, 0.001] for k in range(1, 5)],
                        [k * 50 * MiB for k in range(1, 5)], 1024 * MiB, 1)
    links = Links([[0.0, 1e-4], [1e-4, 0.0]], [[0.0, 1e8], [1e8, 0.0]], [0.0, 0.0])
    ranked = rank([fast, slow], links, traffic, groups=4, batch=1)
    assert [c.spec for c in ranked] == ["0,1,2/3", "0,1/2,3", "0/1,2,3"]
    # The slowest board per step (3 groups on the fast one: 30 ms, 30 ms, then the head), and each message's
    # latency plus its bytes over the link: the input's broadcast, the shuffle's 400 B, the logits' reduce.
    expected = 0.030 + 0.030 + 0.001 + (1e-4 + 300 / 1e8) + (1e-4 + 400 / 1e8) + (1e-4 + 40 / 1e8)
    assert ranked[0].prediction.step_s == pytest.approx(expected, rel=1e-9)
    tight = BoardProfile("fast", fast.step_s, fast.peak_rss, 140 * MiB, 4)  # 3 groups need 150 + 32 MiB
    assert next((c.spec, c.fits) for c in rank([tight, slow], links, traffic, 4, 1)) == ("0,1/2,3", True)


def test_a_board_times_its_branch_with_onnx_runtime_and_no_torch(onnx_export, tmp_path):
    fake = tmp_path / "no-torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch is not installed on this board')\n")
    run = subprocess.run([sys.executable, "-m", "decnn.cluster.measure", str(onnx_export[1] / "shards"), "--one",
                          "--threads", "1"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(fake.parent)})
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert len(result["step_s"]) == 4 + 1 and all(t > 0 for t in result["step_s"])  # 4 segments, the head
    assert 30 * MiB < result["peak_rss"] < 250 * MiB


def test_decnn_edge_pulls_numpy_onnxruntime_mpi4py_and_mpich_only(cache):
    wheel = Wheels(cache / "decnn" / "wheels").decnn()  # built once for these tests (the boards' stamp too)
    with zipfile.ZipFile(wheel) as z:
        lines = z.read("decnn-0.1.0.dist-info/METADATA").decode().splitlines()
    needs = [line.split(": ", 1)[1] for line in lines if line.startswith("Requires-Dist:")]
    assert [r for r in needs if "extra ==" not in r] == []  # the base install pulls nothing
    assert {r.split(">")[0].split(";")[0] for r in edge_extra(wheel)} == EDGE
    assert any(r.startswith("torch==") and 'extra == "torch"' in r for r in needs)
    # The installed decnn (this clone's, editable) declares the same.
    assert edge_extra(wheel) == sorted(r.split(";")[0] for r in metadata.requires("decnn") if 'extra == "edge"' in r)


def test_the_front_door_works_on_a_board_without_torch(tmp_path):
    fake = tmp_path / "no-torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch is not installed on this board')\n")
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    decnn = str(Path(sys.executable).parent / "decnn")
    for argv in ([sys.executable, "-c", "import decnn, decnn.cluster.measure, decnn.cluster.links"],
                 [decnn, "--help"], [decnn, "edge", "--help"], [decnn, "deploy", "--help"]):
        run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        assert run.returncode == 0 and "Traceback" not in run.stderr, (argv, run.stderr)


def test_decnn_bench_deploy_reports_the_speed_up_the_prediction_and_each_board_s_bytes(capsys):
    from decnn.bench.deploy import format_markdown, main, verdict

    assert main(["--rounds", "0"]) == 2 and "--rounds must be at least 1" in capsys.readouterr().err
    assert main(["--cpu", "1", "1.5"]) == 2
    result = {"setup": {"model": "decnn_resnet34", "groups": 4, "width": 1.5, "image_size": 64, "cpu": [1.0, 0.4],
                        "link": "unshaped veth", "images": 64},
              "wheels_fetch_s": 0.0, "fresh_deploy_s": 34.7, "plan_s": 142.7, "planned_deploy_s": 21.3,
              "placement": [[0, 1, 2], [3]], "predicted_ms": 50.0, "even_p50_ms": [80.0, 81.0],
              "planned_p50_ms": [50.0, 54.0], "speedup": [1.6, 1.5], "speedup_median": 1.55,
              "prediction_error": 0.04,
              "held": [{"abc": {"manifest.json": 1000, "device0.seg0.onnx": 5000}}, {"abc": {"device1.seg0.onnx": 7}}]}
    assert verdict(result) == ("placement 0,1,2/3 from the boards' profile: 1.55x the even placement's speed (median "
                               "of 2 rounds); predicted 50.0 ms, measured 52.0 ms (+4.0%)")
    text = format_markdown(result, "decnn bench deploy")
    assert "| 2 | 81.0 | 54.0 | 1.50x |" in text and "board 0, export abc: 6,000 bytes" in text
    assert "board 1, export abc: 7 bytes: device1.seg0.onnx 7" in text
