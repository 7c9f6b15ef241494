"""Faults and bad input as users meet them: every peer failure ends the run within the timeout + 5 s naming
the rank, nothing is left running, Ctrl-C is one line and exit 130, usage errors exit 2 before torch loads."""

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = [sys.executable]
SMALL_RUN = ["--random-init", "--model", "decnn_resnet18", "--width", "0.5", "--image-size", "32", "--batch", "2",
             "--warmup", "1", "--devices", "2", "--log-dir", ""]
TIMEOUT_S = 4  # the runs' --timeout: short, so that the tests are quick
SLACK_S = 5  # what the README promises beyond the timeout


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def _alive(pids: set[int], grace_s: float = 3.0) -> list[int]:
    """Those of ``pids`` still running (zombies aside) ``grace_s`` after the command ended: a worker server
    notices its parent's exit through a pipe, a moment later on a loaded machine."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.append(pid)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


class Run:
    """A command in a session of its own; its stderr lines with their arrival times, and its processes."""

    def __init__(self, argv: list[str], env: dict | None = None):
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True, env={**os.environ, **(env or {})})
        self.lines: list[tuple[float, str]] = []
        self.seen: set[int] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, text: str, limit_s: float = 240) -> float:
        """The time ``text`` appeared on stderr (waits for it)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            self.seen |= _descendants(self.proc.pid)
            hits = [t for t, line in self.lines if text in line]
            if hits:
                return hits[0]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never appeared; stderr:\n{self.stderr}")

    def finish(self, limit_s: float = 240) -> tuple[int, float]:
        """Exit code and the time it ended."""
        deadline = time.monotonic() + limit_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.seen |= _descendants(self.proc.pid)
            time.sleep(0.05)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError(f"still running after {limit_s} s; stderr:\n{self.stderr}")
        ended = time.monotonic()
        self._reader.join(10)
        return self.proc.returncode, ended

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)


def _side_by_side(*argvs: list[str]) -> list[subprocess.CompletedProcess]:
    """``python ARGV`` for each argv, all at once (each is mostly its imports); their results in order."""
    with ThreadPoolExecutor(len(argvs)) as pool:
        return list(pool.map(lambda argv: subprocess.run([*PYTHON, *argv], cwd=ROOT, capture_output=True, text=True,
                                                         timeout=240), argvs))


def _infer_with_fault(fault: str, *extra: str) -> tuple[int, float, Run]:
    """infer_distributed.py on 2 processes with ``fault`` injected; exit code, seconds from fault to end, the run."""
    run = Run([*PYTHON, "infer_distributed.py", *SMALL_RUN, "--num-images", "400", "--timeout", str(TIMEOUT_S),
               *extra], env={"DECNN_INJECT_FAULT": fault})
    injected = run.wait_for("[fault]")
    code, ended = run.finish()
    return code, ended - injected, run


# make test keeps the silent peers (hung at set-up; stopped mid-run: the old overrun); a killed worker is named
# fast by tests/test_split_model.py and tests/test_edge.py. make test-all runs every kind at set-up and mid-run.
# A dead process is seen at once wherever it was, so exit and kill run mid-run only.
_FAST_FAULTS = {("hang", "setup"), ("stop", "3")}
FAULTS = [pytest.param(kind, point, marks=() if (kind, point) in _FAST_FAULTS else pytest.mark.slow)
          for kind in ("exit", "kill", "hang", "stop") for point in ("setup", "3")
          if not (point == "setup" and kind in ("exit", "kill"))]


@pytest.mark.parametrize("kind, point", FAULTS)
def test_a_failed_peer_ends_the_run_in_time_naming_it_and_leaves_nothing(kind, point):
    code, took, run = _infer_with_fault(f"1:{point}:{kind}")
    assert code == 1, run.stderr
    error = [line for _, line in run.lines if line.startswith("error:")]
    assert len(error) == 1, run.stderr
    if kind in ("exit", "kill"):
        assert "rank 1 " in error[0] and ("exited with code 17" in error[0] or "SIGKILL" in error[0]), error
    else:
        assert "rank 1 (host " in error[0] or "rank 1 did not respond" in error[0], error
        assert "did not respond" in error[0], error
        if point == "setup":
            assert "in set-up" in error[0], error
    print(f"\n{kind} at {point}: ended {took:.1f} s after the fault")
    assert took <= TIMEOUT_S + SLACK_S, (took, run.stderr)
    assert len(run.seen) >= 2 and not _alive(run.seen)


@pytest.mark.slow  # make test checks a hung peer in branch mode; the same Communicator carries pipeline's messages
def test_a_hung_pipeline_stage_ends_the_run_in_time_naming_it():
    """The layer-wise baseline's point-to-point messages go through the same timed Communicator."""
    code, took, run = _infer_with_fault("1:3:hang", "--mode", "pipeline")
    assert code == 1, run.stderr
    error = [line for _, line in run.lines if line.startswith("error:")]
    assert len(error) == 1 and "rank 1" in error[0] and "did not respond" in error[0], run.stderr
    assert took <= TIMEOUT_S + SLACK_S, (took, run.stderr)
    assert not _alive(run.seen)


def test_ctrl_c_is_one_line_exit_130_and_leaves_nothing():
    run = Run([*PYTHON, "infer_distributed.py", *SMALL_RUN, "--num-images", "100000"])
    run.wait_for("[infer] timing")  # the timed loop has started
    os.killpg(run.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    code, _ = run.finish(limit_s=30)
    assert code == 130
    assert [line for _, line in run.lines if not line.startswith("[infer]")] == ["interrupted"]
    assert len(run.seen) >= 2 and not _alive(run.seen)


def test_a_dead_process_server_is_one_line():
    """The server the workers fork from is killed each time it starts (the command line starts it early, the
    launcher again when it finds it dead): the run ends with one line, not a traceback."""
    run = Run([*PYTHON, "infer_distributed.py", *SMALL_RUN, "--num-images", "4"])
    killed = 0
    while run.proc.poll() is None:
        for pid in _children(run.proc.pid):  # the server; the workers are its children
            with suppress(OSError):
                if b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
        time.sleep(0.02)
    code, _ = run.finish(limit_s=60)
    assert killed and code == 1, run.stderr
    assert "process server" in run.stderr and "Traceback" not in run.stderr, run.stderr


# -- usage and input errors: exit 2, in the project's words, before torch is imported --

NO_TORCH = "import sys, runpy; sys.argv = {argv!r}; " \
           "exec('try:\\n    runpy.run_path(sys.argv[0], run_name=\"__main__\")\\n" \
           "finally:\\n    print(\"torch loaded\" if \"torch\" in sys.modules else \"no torch\", file=sys.stderr)')"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--random-init", "--batch", "0"], "--batch must be >= 1, e.g. --batch 8"),
        (["--random-init", "--overlap", "0"], "--overlap must be >= 1"),
        (["--random-init", "--placement", "[[0, 1, 2], [3]]"], "e.g. --placement 0,1,2/3"),
        (["--random-init", "--data-root", "x"], "--data-root applies to --checkpoint runs"),
        (["--devices", "2"], "give either --checkpoint PATH"),
        (["--random-init", "--mode", "single", "--check-exchange"], "--check-exchange applies to mode branch"),
    ],
)
def test_infer_usage_errors_exit_2_before_torch_loads(args, message):
    code = NO_TORCH.format(argv=[str(ROOT / "infer_distributed.py"), *args])
    res = subprocess.run([*PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "no torch" in res.stderr, res.stderr


def test_train_missing_config_exits_2_before_torch_loads():
    code = NO_TORCH.format(argv=[str(ROOT / "train.py"), "--config", "configs/nope.yaml"])
    res = subprocess.run([*PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "--config configs/nope.yaml: no such file, e.g. --config configs/" in res.stderr
    assert "no torch" in res.stderr


def test_a_truncated_checkpoint_exits_2_in_both_commands(tmp_path, capsys):
    import torch

    path = tmp_path / "last.pt"
    torch.save({"model": {"w": torch.zeros(1000)}, "model_name": "decnn_resnet18", "model_kwargs": {}}, path)
    path.write_bytes(path.read_bytes()[:300])
    from decnn.jobs.infer import main as infer
    from decnn.train.__main__ import main as train

    for main, argv in [(train, ["--eval-only", str(path)]), (infer, ["--checkpoint", str(path), "--devices", "2"])]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "truncated or corrupt" in err and "miniz" not in err, err


def test_a_pickle_with_code_is_refused_without_suggesting_the_unsafe_option(tmp_path):
    import torch

    from decnn.common.checkpoint import CheckpointError, load_checkpoint

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "model_name": "x", "model_kwargs": {}, "hook": Path("/")}, path)
    with pytest.raises(CheckpointError, match="refuses to load") as info:
        load_checkpoint(path)
    assert "weights_only" not in str(info.value)


def test_python_m_entry_points_exit_2_on_usage_errors():
    for res in _side_by_side(["-m", "decnn.bench", "--rounds", "0"], ["-m", "decnn.jobs.infer", "--batch", "0",
                             "--random-init"], ["-m", "decnn.cli", "nonsense"]):
        assert res.returncode == 2, (res.args, res.stderr)


def test_import_decnn_is_light_and_still_registers_the_models():
    decnn_first, timm_first = _side_by_side(
        ["-c", "import sys, decnn; assert 'torch' not in sys.modules; import timm; "
               "print(type(timm.create_model('decnn_resnet18')).__name__)"],
        ["-c", "import timm, decnn; print(timm.list_models('decnn_*'))"])
    assert decnn_first.stdout.strip() == "DecoupledResNet", decnn_first.stderr
    assert "decnn_resnet34" in timm_first.stdout, timm_first.stderr


# -- training: a checkpoint being written is never torn; a live run folder is locked --

# torch is imported once; every line on stdin forks a saver that writes checkpoints until it is signalled.
SAVERS = """
import os, sys, torch
from decnn.common.checkpoint import save_checkpoint
for _ in sys.stdin:
    pid = os.fork()
    if pid == 0:
        try:
            i = 0
            while True:
                i += 1
                save_checkpoint(sys.argv[1], {"step": i, "model": torch.full((4_000_000,), float(i)),
                                              "model_name": "m", "model_kwargs": {}})
        finally:
            os._exit(0)
    print(pid, flush=True)
    os.waitpid(pid, 0)
    print("ended", flush=True)
"""


def _wait_until(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"no {what} in {timeout_s:.0f} s"
        time.sleep(0.001)


def _inode(path: Path) -> int | None:
    with suppress(FileNotFoundError):
        return path.stat().st_ino
    return None


def _temporary_bytes(folder: Path) -> int:
    """The bytes written so far by the save in progress in ``folder`` (0 if none)."""
    sizes = [0]
    for tmp in folder.glob(".last.pt.*.tmp"):
        with suppress(FileNotFoundError):  # renamed meanwhile
            sizes.append(tmp.stat().st_size)
    return max(sizes)


@pytest.mark.parametrize("sig", [signal.SIGKILL, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_checkpoint_interrupted_while_being_written_is_never_torn(tmp_path, sig):
    import torch

    from decnn.common.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "last.pt"
    steps = []
    savers = subprocess.Popen([*PYTHON, "-c", SAVERS, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        # After one complete save, each kill lands inside the next, at a growing share of its 16 MB written.
        for share in (0.05, 0.25, 0.5, 0.75, 1.0):
            saved = _inode(path)
            savers.stdin.write("go\n")
            savers.stdin.flush()
            pid = int(savers.stdout.readline())
            _wait_until(lambda saved=saved: _inode(path) != saved, "complete save")  # os.replace: a new file
            _wait_until(lambda n=share * 16e6: _temporary_bytes(tmp_path) >= n, f"save {share:.0%} written")
            os.kill(pid, sig)
            assert savers.stdout.readline().strip() == "ended"
            if path.exists():
                ckpt = load_checkpoint(path)
                assert (ckpt["model"] == ckpt["step"]).all()
                steps.append(ckpt["step"])
            leftovers = list(tmp_path.glob(".last.pt.*.tmp"))
            # An interrupt removes its own temporary file; the next save removes a killed writer's.
            assert len(leftovers) <= (sig == signal.SIGKILL)
    finally:
        savers.kill()
        savers.wait()
    assert steps  # some kills came after a complete save, whose file loaded whole
    save_checkpoint(path, {"step": 0, "model": torch.zeros(1), "model_name": "m", "model_kwargs": {}})
    assert not list(tmp_path.glob(".last.pt.*.tmp"))


def test_a_live_run_folder_is_locked(tmp_path):
    from decnn.train.trainer import lock_run_dir

    holder = subprocess.Popen(
        [*PYTHON, "-c", "import pathlib, time; from decnn.train.trainer import lock_run_dir; "
                        f"lock = lock_run_dir(pathlib.Path({str(tmp_path)!r})); print('held', flush=True); "
                        "time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FileExistsError, match=f"in use by a live training \\(pid {holder.pid}\\)"):
            lock_run_dir(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    lock_run_dir(tmp_path).close()  # a dead holder's lock is gone, even after SIGKILL


@pytest.mark.slow
@pytest.mark.netns
def test_a_dead_link_ends_both_hosts_in_time_naming_the_other(tmp_path):
    """Two hosts (network namespaces, one torchrun each); the veth of host 1 goes down mid-run."""
    from decnn.emulation.links import EmulatedLink
    from decnn.emulation.netns import links_available

    ok, reason = links_available()
    if not ok:
        pytest.skip(reason)
    with EmulatedLink(None, num_hosts=2, name_prefix="decnnfault") as link:
        args = [*SMALL_RUN[:-4], "--log-dir", "", "--num-images", "4000", "--timeout", str(TIMEOUT_S)]
        logs = [tmp_path / f"host{i}.log" for i in range(2)]
        procs = [link.popen(i, link.torchrun_argv(i, [str(ROOT / "infer_distributed.py"), *args], port=29561),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w")) for i, log in enumerate(logs)]
        deadline = time.monotonic() + 240
        while "[infer]" not in logs[0].read_text() and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), [log.read_text()[-2000:] for log in logs]
            time.sleep(0.1)
        cut = time.monotonic()
        subprocess.run(["ip", "-n", link.bridge_netns, "link", "set", "h1", "down"], check=True)
        procs[0].wait(timeout=TIMEOUT_S + 60)
        host0_s = time.monotonic() - cut
        # Host 1's rank reports the failure in time too; its torchrun agent then lingers on the rendezvous
        # store it can no longer reach (torch's own timeouts), until the link is closed.
        while "error:" not in logs[1].read_text() and time.monotonic() - cut < TIMEOUT_S + 60:
            time.sleep(0.05)
        host1_s = time.monotonic() - cut
        texts = [log.read_text() for log in logs]
    print(f"\ndead link: host 0 ended {host0_s:.1f} s, host 1's rank reported {host1_s:.1f} s after the cut")
    assert procs[0].returncode != 0, texts[0][-2000:]
    assert "rank 1 (host " in texts[0] and "10.213.0.2" in texts[0] and "did not respond" in texts[0], texts[0][-2000:]
    assert host0_s <= TIMEOUT_S + SLACK_S, (host0_s, texts[0][-2000:])
    if "error:" not in texts[1]:  # seen: torchrun's agent on host 1 blocks 60 s on the store it cannot reach
        pytest.xfail("host 1 cut off: its rank did not report before torchrun's own store timeout")
    assert host1_s <= TIMEOUT_S + SLACK_S, (host1_s, texts[1][-2000:])
