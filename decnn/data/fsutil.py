"""Filesystem helpers: atomic publication of files and folders, and inter-process locks."""

import contextlib
import fcntl
import os
import shutil
import uuid
from pathlib import Path


@contextlib.contextmanager
def atomic_path(dest: Path):
    """Yield an unused temporary path next to ``dest``; on success rename it to ``dest``.

    The caller creates a file or a folder at the yielded path. If the block raises, whatever was
    written there is removed, so a crash never leaves a half-written ``dest``. A folder can only
    replace a ``dest`` that does not exist (or is an empty folder).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        remove(tmp)


def remove(path: Path) -> None:
    """Delete a file or a folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock on ``path`` (created if needed), e.g. while building a cache."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
