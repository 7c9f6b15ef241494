"""The Tiny-ImageNet pipeline, exercised on the digits stand-in (same layout, same code path)."""

import hashlib
import os
import pickle
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from decnn.data import (
    DatasetCorruptError,
    DatasetNotFoundError,
    TinyImageNet,
    cache,
    make_standin,
)
from decnn.data import __main__ as cli
from decnn.data.download import KaggleUnavailableError, download, unpack_zip
from decnn.data.fsutil import remove
from decnn.data.layout import scan
from decnn.data.standin import wnid


@pytest.fixture
def copy(standin, tmp_path):
    """A copy of the stand-in (without its cache) that a test may damage.

    Its files are hard links to the session's stand-in, which is 30x faster than copying: delete
    files freely, but write one only after ``unlinked(path)``.
    """
    before = digest(standin)
    ignore = shutil.ignore_patterns("cache")
    yield Path(shutil.copytree(standin, tmp_path / "ds", ignore=ignore, copy_function=os.link))
    assert digest(standin) == before, "a test wrote into a hard link to the session's stand-in"


def unlinked(path: Path) -> Path:
    """Drop a hard link of ``copy`` so that writing ``path`` makes a new file."""
    path.unlink()
    return path


def decode(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "cache" not in p.relative_to(root).parts
    }


def test_standin_has_the_tiny_imagenet_layout(standin):
    layout = scan(standin)
    assert layout.classes == [wnid(d) for d in range(10)]
    assert layout.class_names[3] == "three, digit three"
    assert len((standin / "words.txt").read_text().splitlines()) > 10  # filtered by wnids.txt
    assert len(layout.train) + len(layout.val) + len(layout.test) == 1797
    val_per_class = np.bincount(layout.val.labels, minlength=10)
    train_per_class = np.bincount(layout.train.labels, minlength=10)
    np.testing.assert_allclose(val_per_class / (val_per_class + train_per_class), 0.2, atol=0.02)
    assert len(layout.test) > 0


def test_make_standin_is_deterministic_and_reuses_a_complete_one(standin, tmp_path):
    stamp = (standin / "wnids.txt").stat().st_mtime_ns
    assert make_standin(standin) == standin
    assert (standin / "wnids.txt").stat().st_mtime_ns == stamp
    (tmp_path / "again").mkdir()
    assert digest(make_standin(tmp_path / "again")) == digest(standin)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        make_standin(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_missing_dataset_names_layout_and_commands(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        TinyImageNet(tmp_path / "nowhere", "train")
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    for text in [
        "wnids.txt",
        "val/val_annotations.txt",
        "train/<wnid>/images",
        "decnn data download",
        "--from-zip",
        "decnn data standin",
    ]:
        assert text in message


@pytest.mark.parametrize(
    "removed, named",
    [
        (f"train/{wnid(3)}", f"train/{wnid(3)}/images"),
        ("val/val_annotations.txt", "val/val_annotations.txt"),
        ("val/images/val_5.JPEG", "val/images/val_5.JPEG"),
        (f"train/{wnid(1)}/{wnid(1)}_boxes.txt", f"train/{wnid(1)}/{wnid(1)}_boxes.txt"),
        ("words.txt", "words.txt"),
    ],
    ids=["class folder", "val annotations", "val image", "boxes file", "words"],
)
def test_incomplete_layout_is_named(copy, removed, named):
    remove(copy / removed)
    with pytest.raises(DatasetCorruptError) as error:
        TinyImageNet(copy, "val")
    assert str(copy / named) in str(error.value)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    unlinked(path).write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage",
    [
        truncate,
        lambda path: Image.new("RGB", (32, 32)).save(unlinked(path)),
    ],
    ids=["truncated", "wrong size"],
)
def test_bad_image_is_named_and_no_cache_is_left(copy, damage):
    broken = copy / "train" / wnid(2) / "images" / f"{wnid(2)}_7.JPEG"
    damage(broken)
    with pytest.raises(DatasetCorruptError) as error:
        TinyImageNet(copy, "train")
    assert str(broken) in str(error.value)
    assert not list((copy / "cache").glob("*.npy")) and not list((copy / "cache").glob("*.tmp"))


@pytest.mark.parametrize("split", ["train", "val"])
def test_cache_equals_jpeg_decoding(standin, split):
    ds = TinyImageNet(standin, split)
    assert len(ds) == len(ds.paths) and ds.num_classes == 10
    for i, path in enumerate(ds.paths):
        image, _ = ds[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), decode(path))
    assert np.load(standin / "cache" / f"{split}_images.npy", mmap_mode="r").shape == (len(ds), 64, 64, 3)


def test_labels_match_annotations(standin):
    annotations = dict(
        line.split("\t")[:2] for line in (standin / "val" / "val_annotations.txt").read_text().splitlines()
    )
    val = TinyImageNet(standin, "val")
    assert val.classes == (standin / "wnids.txt").read_text().split()
    assert [val.classes[val[i][1]] for i in range(len(val))] == [annotations[p.name] for p in val.paths]
    train = TinyImageNet(standin, "train")
    assert [train.classes[label] for label in train.labels] == [p.parent.parent.name for p in train.paths]


def test_cache_is_reused_then_rebuilt_when_the_source_changes(copy, monkeypatch):
    builds = []
    real_build = cache.build

    def counting_build(*args, **kwargs):
        builds.append(args)
        real_build(*args, **kwargs)

    monkeypatch.setattr(cache, "build", counting_build)
    TinyImageNet(copy, "val")
    TinyImageNet(copy, "val")
    assert len(builds) == 1
    replaced = copy / "val" / "images" / "val_0.JPEG"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(unlinked(replaced))
    ds = TinyImageNet(copy, "val")
    assert len(builds) == 2
    np.testing.assert_array_equal(ds[0][0].permute(1, 2, 0).numpy(), decode(replaced))


def test_greyscale_becomes_three_channels(copy, standin):
    assert any(Image.open(p).mode == "L" for p in scan(standin).val.paths)
    grey = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    path = copy / "val" / "images" / "val_0.JPEG"
    Image.fromarray(grey, mode="L").save(unlinked(path))
    image, _ = TinyImageNet(copy, "val")[0]
    assert image.shape == (3, 64, 64)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    np.testing.assert_array_equal(image[0].numpy(), np.asarray(Image.open(path)))


def test_transform_gets_the_uint8_tensor(standin):
    plain = TinyImageNet(standin, "val")
    flipped = TinyImageNet(standin, "val", transform=v2.RandomHorizontalFlip(p=1.0))
    assert torch.equal(flipped[4][0], plain[4][0].flip(-1))


def test_pickling_leaves_the_images_behind(standin):
    ds = TinyImageNet(standin, "train")
    ds[0]  # maps the cache file
    blob = pickle.dumps(ds)  # what a spawned DataLoader worker receives
    assert len(blob) < (standin / "cache" / "train_images.npy").stat().st_size / 10
    assert torch.equal(pickle.loads(blob)[5][0], ds[5][0])


def write_zip(path: Path, root: Path, skip: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in digest(root):
            if name != skip:
                archive.write(root / name, f"tiny-imagenet-200/{name}")
    return path


def test_zip_route_unpacks_and_validates(standin, tmp_path):
    archive = write_zip(tmp_path / "tiny-imagenet-200.zip", standin)
    data = tmp_path / "data"
    layout = unpack_zip(archive, data / "tiny-imagenet-200")
    assert layout.root == data / "tiny-imagenet-200" and len(layout.val) == len(scan(standin).val)
    assert digest(layout.root) == digest(standin)
    assert [p.name for p in data.iterdir()] == ["tiny-imagenet-200"]  # no temporary folder left
    assert cli.main(["download", "--root", str(data), "--from-zip", str(archive)]) == 0


def test_incomplete_zip_leaves_nothing(standin, tmp_path):
    archive = write_zip(tmp_path / "tiny-imagenet-200.zip", standin, skip="val/val_annotations.txt")
    data = tmp_path / "data"
    with pytest.raises(DatasetCorruptError, match=r"val_annotations\.txt"):
        unpack_zip(archive, data / "tiny-imagenet-200")
    assert list(data.iterdir()) == []


def test_zip_path_traversal_is_refused(standin, tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(standin / "wnids.txt", "tiny-imagenet-200/wnids.txt")
        z.writestr("tiny-imagenet-200/../../evil.txt", "pwned")
    data = tmp_path / "data"
    with pytest.raises(DatasetCorruptError, match=r"evil\.txt"):
        unpack_zip(archive, data / "tiny-imagenet-200")
    assert not list(tmp_path.rglob("evil.txt")) and list(data.iterdir()) == []


def test_missing_kaggle_credentials_give_a_clear_message(tmp_path, monkeypatch):
    connections = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: connections.append(address))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kw: connections.append(args))
    for name in ["KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"]:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path))
    pytest.importorskip("kaggle")
    with pytest.raises(KaggleUnavailableError) as error:
        download(tmp_path / "data")
    message = str(error.value)
    for text in [
        "no Kaggle credentials found",
        "~/.kaggle/kaggle.json",
        "KAGGLE_CONFIG_DIR",
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        "--from-zip",
        "tiny-imagenet-200.zip",
        "decnn data standin",
    ]:
        assert text in message
    assert connections == [] and not (tmp_path / "data" / "tiny-imagenet-200").exists()


def test_cli_check_and_prepare(copy, tmp_path, capsys):
    assert cli.main(["check", "--root", str(copy)]) == 0
    assert "classes: 10" in capsys.readouterr().out
    assert not (copy / "cache").exists()
    assert cli.main(["prepare", "--root", str(copy)]) == 0
    assert {p.name for p in (copy / "cache").glob("*.npy")} == {
        "train_images.npy",
        "train_labels.npy",
        "val_images.npy",
        "val_labels.npy",
    }
    assert cli.main(["check", "--root", str(tmp_path / "nowhere")]) == 2  # an input error
    assert "decnn data standin" in capsys.readouterr().err


def test_sample_writes_the_val_images_as_the_evaluation_resizes_them(standin, tmp_path):
    from decnn.inference.inputs import ValImages

    assert cli.main(["sample", "--root", str(standin), "--images", "5", "--size", "32", "--out",
                     str(tmp_path / "val.npz")]) == 0
    data = np.load(tmp_path / "val.npz")
    images, labels = ValImages(standin, 5, 32).batch(0, 5)  # what a split run of a checkpoint feeds the model
    assert data["images"].dtype == np.uint8 and np.array_equal(data["images"], images.numpy())
    assert np.array_equal(data["labels"], labels.numpy())
