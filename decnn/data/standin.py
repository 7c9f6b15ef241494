"""The offline stand-in: scikit-learn's handwritten digits, written in the Tiny-ImageNet layout.

Each 8x8 digit becomes a 64x64 JPEG: scaled to a random size, placed at a random offset, in random
light-on-dark or dark-on-light colours, with pixel noise; a few are saved greyscale, as in
Tiny-ImageNet. Everything is drawn from a seeded RNG per image, so the output is reproducible.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from decnn.data.fsutil import atomic_path, file_lock, remove
from decnn.data.layout import IMAGE_SIZE, STANDIN_ROOT, DatasetCorruptError, scan

SEED = 0
STAMP_FILE = "standin.json"
STAMP = {"generator": "decnn.data.standin", "version": 1, "seed": SEED}
TEST_IMAGES = 50
VAL_FRACTION = 0.2
GREY_FRACTION = 0.05
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# The real words.txt names every ImageNet id, not only the 200 classes: keep a few others.
OTHER_WORDS = {"n00001740": "entity", "n00001930": "physical entity", "n00002137": "abstraction"}


def make_standin(root: str | Path = STANDIN_ROOT) -> Path:
    """Write the stand-in dataset at ``root`` and return ``root``.

    A complete stand-in already there is reused; an older or damaged one is rewritten; any other
    non-empty ``root`` is left alone (FileExistsError).
    """
    root = Path(root)
    with file_lock(root.with_name(f".{root.name}.lock")):
        if root.exists():
            stamp = root / STAMP_FILE
            if stamp.is_file() and json.loads(stamp.read_text()) == STAMP and _is_complete(root):
                return root
            if not stamp.is_file() and (root.is_file() or any(root.iterdir())):
                raise FileExistsError(f"{root} exists and was not written by make_standin")
            remove(root)
        with atomic_path(root) as tmp:
            _write(tmp)
    return root


def wnid(digit: int) -> str:
    """The stand-in's class id for a digit."""
    return f"n{digit:08d}"


def _is_complete(root: Path) -> bool:
    try:
        scan(root)
    except (FileNotFoundError, DatasetCorruptError):
        return False
    return True


def _write(root: Path) -> None:
    # Imported here: scikit-learn takes a second to import and only the stand-in needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    y = digits.target
    rest, test = train_test_split(np.arange(len(y)), test_size=TEST_IMAGES, stratify=y, random_state=SEED)
    train, val = train_test_split(rest, test_size=VAL_FRACTION, stratify=y[rest], random_state=SEED)

    def save(index: int, path: Path) -> tuple[int, int, int, int]:
        image, box = _render(digits.images[index], np.random.default_rng([SEED, index]))
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)
        return box

    root.mkdir(parents=True)
    classes = [wnid(d) for d in range(10)]
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in classes))
    words = {**OTHER_WORDS, **{w: f"{name}, digit {name}" for w, name in zip(classes, DIGIT_NAMES)}}
    (root / "words.txt").write_text("".join(f"{w}\t{words[w]}\n" for w in sorted(words)))
    for digit, w in enumerate(classes):
        folder = root / "train" / w
        boxes = []
        for k, index in enumerate(sorted(train[y[train] == digit])):
            name = f"{w}_{k}.JPEG"
            boxes.append([name, *save(index, folder / "images" / name)])
        _write_rows(folder / f"{w}_boxes.txt", boxes)
    annotations = []
    for k, index in enumerate(val):
        name = f"val_{k}.JPEG"
        annotations.append([name, classes[y[index]], *save(index, root / "val" / "images" / name)])
    _write_rows(root / "val" / "val_annotations.txt", annotations)
    for k, index in enumerate(test):
        save(index, root / "test" / "images" / f"test_{k}.JPEG")
    (root / STAMP_FILE).write_text(json.dumps(STAMP))


def _render(digit: np.ndarray, rng: np.random.Generator) -> tuple[Image.Image, tuple]:
    """Draw one 8x8 digit (values 0..16) into a 64x64 image; return it and the digit's box."""
    size = int(rng.integers(28, IMAGE_SIZE - 7))
    x0, y0 = (int(v) for v in rng.integers(0, IMAGE_SIZE - size + 1, size=2))
    glyph = Image.fromarray(np.uint8(digit * 255 / 16)).resize((size, size), Image.Resampling.BICUBIC)
    alpha = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 1))
    alpha[y0 : y0 + size, x0 : x0 + size, 0] = np.asarray(glyph) / 255
    dark, light = rng.uniform(0, 100, 3), rng.uniform(155, 255, 3)
    background, ink = (dark, light) if rng.random() < 0.5 else (light, dark)
    pixels = background * (1 - alpha) + ink * alpha + rng.normal(0, 8, (IMAGE_SIZE, IMAGE_SIZE, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    if rng.random() < GREY_FRACTION:
        image = image.convert("L")
    return image, (x0, y0, x0 + size - 1, y0 + size - 1)


def _write_rows(path: Path, rows: list[list]) -> None:
    path.write_text("".join("\t".join(map(str, row)) + "\n" for row in rows))
