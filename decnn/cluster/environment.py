"""The device environment on a board: ``decnn[edge]`` in a venv at ``~/.decnn/env``.

decnn's own wheel is built here from this source tree (``pip wheel``, from a clean copy and with fixed
timestamps, so the same sources give the same bytes and a board that has them installs nothing; built once per
version of the sources). Its
dependencies (numpy, onnxruntime, mpi4py, mpich) come from the package index where the board reaches it;
otherwise they are fetched here for the board's platform (``pip download --platform ... --only-binary=:all:``,
kept in ``~/.cache/decnn/wheels``) and copied over. The board's MPICH is pinned to this laptop's: the laptop's
``mpiexec`` talks to its proxies there. A stamp in the venv says what was installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from decnn.cluster.facts import Facts

WHEELS, ENV = "wheels", "env"  # folders under ~/.decnn
STAMP = "decnn-env.json"
_PINNED = ("mpich",)  # the laptop's mpiexec and the boards' hydra proxies speak one protocol
_OLDEST_MANYLINUX = 17  # manylinux_2_17 (manylinux2014): the oldest glibc the wheels are built for
_REPRODUCIBLE = {"SOURCE_DATE_EPOCH": "315532800"}  # 1980-01-01: wheel entries' timestamps, whatever the files'
_SOURCE_FILES = ("setup.cfg", "pyproject.toml", "README.md")
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


class LaptopError(RuntimeError):
    """What the laptop itself could not do (build decnn's wheel, fetch the boards' wheels); one line."""


def source_tree() -> Path:
    """The source tree of the decnn that runs here (a clone, installed with ``pip install -e``)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "setup.cfg").is_file():
        raise LaptopError(f"decnn deploy builds decnn's wheel from its source tree, and {root} is not one: install "
                          "decnn from a clone (git clone ...; make install)")
    return root


def build_wheel(out: Path) -> Path:
    """decnn's wheel, built from a clean copy of its source tree into ``out``."""
    root = source_tree()
    copy = out / "source"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir(parents=True)
    for name in _SOURCE_FILES:
        shutil.copy2(root / name, copy / name)
    shutil.copytree(root / "decnn", copy / "decnn", ignore=_IGNORED)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "--wheel-dir", str(out), str(copy)], capture_output=True, text=True,
                          env={**os.environ, **_REPRODUCIBLE})
    shutil.rmtree(copy, ignore_errors=True)
    wheels = sorted(out.glob("decnn-*.whl"))
    if proc.returncode or not wheels:
        said = (proc.stderr.strip().splitlines() or ["no wheel written"])[-1]
        raise LaptopError(f"building decnn's wheel failed ({said}): pip install 'setuptools>=70.1' here")
    return wheels[-1]


def source_id() -> str:
    """A hash of what decnn's wheel is built from: the same id, the same wheel."""
    root = source_tree()
    h = hashlib.sha256()
    files = [root / n for n in _SOURCE_FILES] + sorted(
        p for p in (root / "decnn").rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    for path in files:
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def requirements(wheel: Path) -> list[str]:
    """What a board installs: ``decnn[edge]`` from ``wheel`` (named where the board keeps it), and the pins."""
    pins = []
    for name in _PINNED:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            raise LaptopError(f"decnn deploy starts the boards with this machine's mpiexec: pip install {name} "
                              "(or make install)") from None
    return [f"decnn[edge] @ file://{wheel}", *pins]


def edge_extra(wheel: Path) -> list[str]:
    """The ``edge`` extra's requirements as ``wheel``'s metadata declares them."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(name).decode().splitlines()
    marker = "; extra == \"edge\""
    return sorted(line.split(": ", 1)[1].replace(marker, "").strip() for line in lines
                  if line.startswith("Requires-Dist:") and line.endswith(marker))


@dataclass(frozen=True)
class Platform:
    """What a board's wheels must fit: its CPU architecture, Python and glibc."""

    architecture: str
    python: tuple[int, int]
    glibc: tuple[int, int]

    @classmethod
    def of(cls, facts: Facts) -> Platform:
        return cls(facts.architecture, tuple(facts.python[:2]), facts.glibc)

    @property
    def key(self) -> str:
        return f"cp{self.python[0]}{self.python[1]}-{self.architecture}-glibc{self.glibc[0]}.{self.glibc[1]}"

    def pip_args(self) -> list[str]:
        """``pip download`` options that select this platform's wheels (every manylinux its glibc runs)."""
        tags = [f"manylinux_2_{m}_{self.architecture}" for m in range(self.glibc[1], _OLDEST_MANYLINUX - 1, -1)]
        platforms = [a for tag in [*tags, f"manylinux2014_{self.architecture}"] for a in ("--platform", tag)]
        return [*platforms, "--python-version", f"{self.python[0]}.{self.python[1]}", "--implementation", "cp",
                "--only-binary=:all:"]


class Wheels:
    """The wheels a deploy copies to boards: decnn's, and per platform its dependencies; kept in ``cache``."""

    def __init__(self, cache: Path | None = None):
        self.cache = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "decnn" / "wheels"
        self._lock = threading.Lock()
        self._decnn: Path | None = None
        self._fetched: dict[Platform, list[Path]] = {}
        self.fetch_s = 0.0  # spent in pip download

    def decnn(self) -> Path:
        """decnn's wheel, built once per version of the sources (kept beside the fetched ones)."""
        with self._lock:
            if self._decnn is None:
                folder = self.cache / f"decnn-{source_id()}"
                built = sorted(folder.glob("decnn-*.whl"))
                if not built:
                    for stale in self.cache.glob("decnn-*"):
                        shutil.rmtree(stale, ignore_errors=True)
                    built = [build_wheel(folder)]
                self._decnn = built[-1]
            return self._decnn

    def dependencies(self, platform: Platform) -> list[Path]:
        """The dependencies' wheels for ``platform``: fetched once (pip download), then from the cache."""
        wheel = self.decnn()
        with self._lock:
            if platform not in self._fetched:
                self._fetched[platform] = self._fetch(platform, wheel)
            return self._fetched[platform]

    def _fetch(self, platform: Platform, wheel: Path) -> list[Path]:
        folder = self.cache / platform.key
        wanted = {"requirements": [*edge_extra(wheel), *requirements(wheel)[1:]]}
        done = folder / "complete.json"
        if not (done.is_file() and json.loads(done.read_text()) == wanted):
            folder.mkdir(parents=True, exist_ok=True)
            done.unlink(missing_ok=True)
            start = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                                   "--dest", str(folder), *platform.pip_args(), *requirements(wheel)],
                                  capture_output=True, text=True)
            self.fetch_s += time.monotonic() - start
            if proc.returncode:
                said = (proc.stderr.strip().splitlines() or ["no message"])[-1]
                raise LaptopError(f"cannot fetch the wheels for {platform.key} boards ({said}): connect this machine "
                                  f"to the package index once (they are kept in {self.cache})")
            for stale in folder.glob("decnn-*.whl"):  # decnn's own is built afresh for every deploy
                stale.unlink()
            done.write_text(json.dumps(wanted) + "\n")
        return sorted(folder.glob("*.whl"))


def stamp(decnn_wheel_sha: str, dependencies: str) -> dict:
    """What an environment holds: decnn's wheel (its hash) and its dependencies (the index, or their hashes)."""
    return {"decnn": decnn_wheel_sha, "dependencies": dependencies}


def dependencies_id(hashes: list[str]) -> str:
    """One id for a set of dependency wheels, from their SHA-256s."""
    return hashlib.sha256("".join(sorted(hashes)).encode()).hexdigest()


def install_script(root: str, wheel: Path, pins: list[str], offline: bool, full: bool, new_stamp: dict) -> str:
    """The shell commands that install (``full``: a fresh venv and decnn[edge] with its dependencies; otherwise
    decnn's wheel alone) under ``root`` (~/.decnn) and then write the stamp."""
    env, board_wheel = f"{root}/{ENV}", f"{root}/{WHEELS}/{wheel.name}"
    pip = [f"{env}/bin/python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if full:
        index = ["--no-index", "--find-links", f"{root}/{WHEELS}"] if offline else []
        steps = [["python3", "-m", "venv", "--clear", env],
                 [*pip, *index, f"decnn[edge] @ file://{board_wheel}", *pins]]
    else:
        steps = [[*pip, "--no-index", "--no-deps", "--force-reinstall", board_wheel]]
    lines = [" ".join(map(shlex.quote, step)) for step in steps]
    lines.append(f"echo {shlex.quote(json.dumps(new_stamp))} > {shlex.quote(f'{env}/{STAMP}')}")
    return "set -e\n" + "\n".join(lines) + "\n"
