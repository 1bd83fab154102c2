"""Data sources: a name (config `data.*.source`) and a directory in that source's layout.

Each loader returns a dict of NumPy arrays with the same leading length: at least `image` uint8
[N, S, S, 1] (resized to the run's image size) and `label` int32 [N] (1 = abnormal). Loading into memory suits
the small sets here; file-streaming loaders for large sets belong beside these.
"""

from __future__ import annotations

import csv
import pathlib

import ml_collections
import numpy as np
from PIL import Image

from cxr_jax.data import phantom


class DataError(ValueError):
    """A file, row or column of a data set is not what its layout requires."""


def load(spec: ml_collections.ConfigDict, *, image_size: int, seed: int) -> dict[str, np.ndarray]:
    """Loads `spec.source` from `spec.path`, split `spec.split`, at most `spec.num_examples` (0: all)."""
    if spec.source not in SOURCES:
        raise DataError(f"unknown data source {spec.source!r}; known: {sorted(SOURCES)}")
    return SOURCES[spec.source](spec, image_size=image_size, seed=seed)


def load_phantom(spec, *, image_size: int, seed: int) -> dict[str, np.ndarray]:
    """The embedded phantom; each split draws from its own seed so train and eval never share images."""
    if spec.num_examples <= 0:
        raise DataError("the phantom source needs data.<split>.num_examples > 0 (how many images to draw)")
    split_seed = {"train": 0, "valid": 1, "test": 2}.get(spec.split)
    if split_seed is None:
        raise DataError(f"phantom split must be train, valid or test; got {spec.split!r}")
    return phantom.generate(spec.num_examples, image_size=image_size, seed=seed * 3 + split_seed)


def load_nih1000(spec, *, image_size: int, seed: int) -> dict[str, np.ndarray]:
    """NIH ChestX-ray14 subset: `metadata.csv` (image, split, abnormal, …) and `images/*.png`."""
    del seed
    root = _require_dir(spec)
    rows = [r for r in _read_csv(root / "metadata.csv", ("image", "split", "abnormal"))
            if r["split"] == spec.split]
    if not rows:
        raise DataError(f"{root / 'metadata.csv'}: no rows with split == {spec.split!r}")
    if spec.num_examples > 0:
        rows = rows[:spec.num_examples]
    labels = []
    for line, row in enumerate(rows, start=2):
        if row["abnormal"] not in ("0", "1"):
            raise DataError(f"{root / 'metadata.csv'}: row {line}: abnormal must be 0 or 1, got {row['abnormal']!r}")
        labels.append(int(row["abnormal"]))
    images = np.stack([read_gray(root / r["image"], image_size) for r in rows])
    return {"image": images[..., None], "label": np.asarray(labels, np.int32)}


def read_gray(path: pathlib.Path, image_size: int) -> np.ndarray:
    """Reads an 8-bit grayscale image, pads it to a square and resizes it; errors name the file."""
    if not path.is_file():
        raise DataError(f"{path}: image file is missing")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode != "L":
                raise DataError(f"{path}: expected an 8-bit grayscale image (mode L), got mode {im.mode}")
            array = np.asarray(im)
    except DataError:
        raise
    except Exception as e:  # PIL raises several types for corrupt or truncated files.
        raise DataError(f"{path}: cannot decode image ({e})") from e
    h, w = array.shape
    side = max(h, w)
    if h != w:
        padded = np.zeros((side, side), np.uint8)
        padded[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = array
        array = padded
    if side != image_size:
        array = np.asarray(Image.fromarray(array).resize((image_size, image_size), Image.BILINEAR))
    return array


def _require_dir(spec) -> pathlib.Path:
    if spec.path is None:
        raise DataError(f"data source {spec.source!r} needs data.<split>.path (a directory in its layout)")
    root = pathlib.Path(spec.path)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (data source {spec.source!r})")
    return root


def _read_csv(path: pathlib.Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"{path}: file is missing")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing required column(s) {missing}; has {reader.fieldnames}")
        return list(reader)


SOURCES = {
    "phantom": load_phantom,
    "nih1000": load_nih1000,
}
