"""Fetching Tiny-ImageNet: from Kaggle, or from a zip downloaded by hand; unpacked safely."""

import contextlib
import io
import os
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from decnn.data.layout import DEFAULT_ROOT, DatasetCorruptError, Layout, scan

COMPETITION = "tiny-imagenet"
ZIP_NAME = "tiny-imagenet-200.zip"


class KaggleUnavailableError(RuntimeError):
    """The Kaggle route cannot be used; the message says why and what to do instead."""


def kaggle_help(data_dir: Path) -> str:
    return (
        "Kaggle reads credentials from ~/.kaggle/kaggle.json ($KAGGLE_CONFIG_DIR/kaggle.json when that "
        "variable is set) or from the environment variables KAGGLE_USERNAME and KAGGLE_KEY: create a "
        "token at https://www.kaggle.com/settings, and accept the competition's rules at "
        f"https://www.kaggle.com/c/{COMPETITION}.\n"
        f"Without Kaggle: download {ZIP_NAME} by hand (e.g. from "
        f"http://cs231n.stanford.edu/{ZIP_NAME}) and run\n"
        f"  decnn data download --root {data_dir} --from-zip PATH/TO/{ZIP_NAME}\n"
        "To try the code offline: decnn data standin"
    )


def download(data_dir: str | Path = DEFAULT_ROOT.parent) -> Layout:
    """Fetch the Kaggle competition's files and unpack them to ``data_dir/tiny-imagenet-200``."""
    data_dir = Path(data_dir)
    dest = data_dir / DEFAULT_ROOT.name
    if dest.exists():
        return _existing(dest)
    api = _kaggle_api(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".kaggle-download-") as tmp:
        try:
            api.competition_download_files(COMPETITION, path=tmp, quiet=False)
        except Exception as e:
            raise KaggleUnavailableError(
                f"Downloading the Kaggle competition {COMPETITION!r} failed ({e}).\n" + kaggle_help(data_dir)
            ) from e
        archives = sorted(Path(tmp).glob("*.zip"))
        if len(archives) != 1:
            raise KaggleUnavailableError(f"Kaggle gave {len(archives)} zip files in {tmp}, expected 1")
        return unpack_zip(archives[0], dest)


def _kaggle_api(data_dir: Path):
    """An authenticated KaggleApi, or KaggleUnavailableError saying where credentials go."""
    # kaggle authenticates when imported and prints its own help (or exits) without credentials.
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except ImportError as e:
        cause = f"the kaggle package cannot be imported ({e})"
    except SystemExit:
        cause = "no Kaggle credentials found"
    except Exception as e:
        cause = f"Kaggle authentication failed ({e})"
    else:
        return api
    raise KaggleUnavailableError(f"Cannot download from Kaggle: {cause}.\n" + kaggle_help(data_dir))


def unpack_zip(zip_path: str | Path, dest: str | Path) -> Layout:
    """Unpack a Tiny-ImageNet zip into ``dest`` and validate it.

    Members that would land outside the target (absolute paths, ``..``, links) are refused. The
    archive is unpacked into a temporary folder beside ``dest`` and renamed only once the layout is
    valid, so a failure leaves nothing behind.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    if dest.exists():
        return _existing(dest)
    if not zip_path.is_file():
        raise FileNotFoundError(f"{zip_path}: no such file")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.unpack-") as tmp:
        found = _extract(zip_path, Path(tmp) / "unpacked")
        scan(found)
        os.replace(found, dest)
    return scan(dest)


def _existing(dest: Path) -> Layout:
    try:
        return scan(dest)
    except (FileNotFoundError, DatasetCorruptError) as e:
        raise FileExistsError(f"{dest} exists but is not a complete dataset; remove it first.\n{e}") from e


def _extract(zip_path: Path, into: Path) -> Path:
    """Unpack ``zip_path`` into ``into``; return the folder holding wnids.txt."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for member in archive.infolist():
                _check_member(zip_path, member)
            archive.extractall(into)  # checks each member's CRC
    except zipfile.BadZipFile as e:
        raise DatasetCorruptError(f"{zip_path}: corrupt zip archive ({e})") from e
    roots = [p.parent for p in into.rglob("wnids.txt")]
    if len(roots) == 1:
        return roots[0]
    inner = list(into.rglob("*.zip"))
    if not roots and len(inner) == 1:  # an archive wrapping tiny-imagenet-200.zip
        return _extract(inner[0], into / "inner")
    raise DatasetCorruptError(f"{zip_path}: expected one folder with wnids.txt, found {len(roots)}")


def _check_member(zip_path: Path, member: zipfile.ZipInfo) -> None:
    path = PurePosixPath(member.filename.replace("\\", "/"))
    is_link = (member.external_attr >> 16) & 0o170000 == 0o120000
    if path.is_absolute() or ".." in path.parts or ":" in member.filename or is_link:
        raise DatasetCorruptError(f"{zip_path}: refusing unsafe member {member.filename!r}")
