"""Reading images, masks and CSVs of a data layout, with errors that name the file and row."""

from __future__ import annotations

import csv
import hashlib
import pathlib

import numpy as np
from PIL import Image

VALID_FRACTION = 0.2  # Share of a hash split that is `valid`.


class DataError(ValueError):
    """A file, row or column of a data set is not what its layout requires."""


def read_gray(path: pathlib.Path, image_size: int, *, mask: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """An 8-bit grayscale image padded to a square (centred) and resized; returns it and the original (h, w).

    Masks (`mask=True`) are resized with nearest neighbours and returned as 0/1.
    """
    array = _decode(path)
    h, w = array.shape
    side = max(h, w)
    if h != w:
        padded = np.zeros((side, side), np.uint8)
        top, left = (side - h) // 2, (side - w) // 2
        padded[top:top + h, left:left + w] = array
        array = padded
    if side != image_size:
        resample = Image.NEAREST if mask else Image.BILINEAR
        array = np.asarray(Image.fromarray(array).resize((image_size, image_size), resample))
    return ((array > 127).astype(np.uint8) if mask else array), (h, w)


def read_images(files, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """`read_gray` over `files`: images uint8 [N, S, S, 1] and original sizes int32 [N, 2]."""
    if not files:
        return np.zeros((0, image_size, image_size, 1), np.uint8), np.zeros((0, 2), np.int32)
    images, sizes = zip(*(read_gray(f, image_size) for f in files))
    return np.stack(images)[..., None], np.asarray(sizes, np.int32)


def in_split(key: str, split: str) -> bool:
    """A deterministic split for layouts without one: ~VALID_FRACTION of keys are `valid`, the rest `train`."""
    if split == "all":
        return True
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 16**8
    return (bucket < VALID_FRACTION) == (split == "valid")


def square_coords(xy: np.ndarray, orig_size: tuple[int, int], image_size: int, *, edges: bool = False) -> np.ndarray:
    """Maps (x, y) coordinates of an original image to those of its `read_gray` output.

    Points (landmarks) use pixel centres at integers; `edges=True` is for box corners, where pixel i spans
    [i, i + 1) (boxes are (x0, y0, x1, y1) with x1 exclusive, as the phantom writes them).
    """
    h, w = orig_size
    side = max(h, w)
    offset = np.array([(side - w) // 2, (side - h) // 2], np.float32) + (0.0 if edges else 0.5)
    return ((np.asarray(xy, np.float32) + offset) * image_size / side - (0.0 if edges else 0.5)).astype(np.float32)


def read_csv(path: pathlib.Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV file that must have the `required` columns."""
    if not path.is_file():
        raise DataError(f"{path}: file is missing")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing required column(s) {missing}; has {reader.fieldnames}")
        return list(reader)


def parse_number(path: pathlib.Path, line: int, column: str, text: str, kind=float):
    """A numeric cell, or an error naming the file, row and column."""
    try:
        return kind(text)
    except ValueError:
        raise DataError(f"{path}: row {line}: {column} must be a {kind.__name__}, got {text!r}") from None


def require_dir(path: str | None, source: str) -> pathlib.Path:
    """The data directory of a source, or an error saying what is missing."""
    if path is None:
        raise DataError(f"data source {source!r} needs data.<split>.path (a directory in its layout)")
    root = pathlib.Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (data source {source!r})")
    return root


def _decode(path: pathlib.Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: image file is missing")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode != "L":
                raise DataError(f"{path}: expected an 8-bit grayscale image (mode L), got mode {im.mode}")
            return np.asarray(im)
    except DataError:
        raise
    except Exception as e:  # PIL raises several types for corrupt or truncated files.
        raise DataError(f"{path}: cannot decode image ({e})") from e
