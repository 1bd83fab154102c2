"""Reading images, masks and CSVs of a data layout, with errors that name the file and row."""

from __future__ import annotations

import csv
import gzip
import hashlib
import logging
import pathlib
from collections.abc import Callable, Iterable

import numpy as np
from PIL import Image

VALID_FRACTION = 0.2  # Share of a hash split that is `valid`.
ON_ERROR = ("raise", "skip")
STRING_KEYS = ("name", "text", "file", "report_findings", "report_impression")  # Stacked as object arrays of str.

log = logging.getLogger("cxr_jax.data")


class DataError(ValueError):
    """A file, row or column of a data set is not what its layout requires."""


class Examples(dict):
    """A loader's arrays (keys in `sources/__init__.py`), plus `skipped`: why each left-out example was bad."""

    def __init__(self, arrays: dict, skipped: list[str] | None = None):
        super().__init__(arrays)
        self.skipped = list(skipped or [])


def collect(rows: Iterable[tuple[int, dict]], read_row: Callable[[int, dict], dict], *, spec, image_size: int,
            where: str) -> Examples:
    """Stacks `read_row(line, row)` over `rows` into arrays; reads `file` into `image` unless `spec.stream`.

    A `DataError` stops loading (`spec.on_error == 'raise'`) or leaves that example out and is counted
    (`'skip'`), so a bad file never becomes a silently wrong example. `where` names the set in the log line.
    """
    if spec.on_error not in ON_ERROR:
        raise DataError(f"data on_error must be one of {ON_ERROR}; got {spec.on_error!r}")
    examples, skipped = [], []
    for line, row in rows:
        try:
            example = read_row(line, row)
            if "file" in example and not spec.stream:
                example["image"], example["orig_size"] = read_gray(example["file"], image_size)
        except DataError as e:
            if spec.on_error == "raise":
                raise
            skipped.append(str(e))
            continue
        examples.append(example)
    if skipped and not examples:
        raise DataError(f"{where}: all {len(skipped)} examples are bad (on_error='skip'); first: {skipped[0]}")
    if skipped:
        log.warning("%s: skipped %d of %d examples (on_error='skip'); first: %s", where, len(skipped),
                    len(skipped) + len(examples), skipped[0])
    return Examples(_stack(examples), skipped)


def first(rows: list, spec) -> list:
    """The first `spec.num_examples` rows (all when it is 0): the cap every loader applies before reading."""
    return rows[:spec.num_examples] if spec.num_examples > 0 else rows


def _stack(examples: list[dict]) -> dict[str, np.ndarray]:
    if not examples:
        return {}
    arrays = {}
    for key in examples[0]:
        values = [e[key] for e in examples]
        if key in STRING_KEYS:
            arrays[key] = np.asarray([str(v) for v in values], object)
        else:
            arrays[key] = np.asarray(values)
    if "image" in arrays:
        arrays["image"] = arrays["image"][..., None].astype(np.uint8)
    for key in ("label", "orig_size", "findings"):
        if key in arrays:
            arrays[key] = arrays[key].astype(np.int32)
    return arrays


def read_gray(path: pathlib.Path, image_size: int, *, mask: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """An 8-bit grayscale image padded to a square (centred) and resized; returns it and the original (h, w).

    Masks (`mask=True`) are resized with nearest neighbours and returned as 0/1.
    """
    return to_square(decode(path), image_size, mask=mask)


def to_square(array: np.ndarray, image_size: int, *, mask: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """`read_gray` of an already decoded uint8 array [H, W]."""
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
    side, offset, centre = _square_frame(orig_size, edges)
    return ((np.asarray(xy, np.float32) + offset) * image_size / side - centre).astype(np.float32)


def original_coords(xy: np.ndarray, orig_size: tuple[int, int], image_size: int, *, edges: bool = False) -> np.ndarray:
    """The inverse of `square_coords`: (x, y) in a `read_gray` output back in the original image's pixels."""
    side, offset, centre = _square_frame(orig_size, edges)
    return ((np.asarray(xy, np.float32) + centre) * side / image_size - offset).astype(np.float32)


def _square_frame(orig_size: tuple[int, int], edges: bool) -> tuple[int, np.ndarray, float]:
    """`read_gray`'s padded square: its side, the original's (x, y) shift into it, and the pixel-centre offset.

    The offset is 0.5 for points at pixel centres and 0 for box edges; the shift includes it.
    """
    h, w = orig_size
    side = max(h, w)
    centre = 0.0 if edges else 0.5
    return side, np.array([(side - w) // 2, (side - h) // 2], np.float32) + centre, centre


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")


def image_files(paths) -> list[pathlib.Path]:
    """The image files among `paths` (files or directories, searched recursively), directories sorted."""
    files = []
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or directory")
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {[str(p) for p in paths]}")
    return files


def read_images(paths, image_size: int) -> tuple[list[pathlib.Path], np.ndarray, list[tuple[int, int]]]:
    """The files under `paths` (`image_files`), their uint8 squares [N, S, S, 1] (`read_gray`), original (h, w)."""
    files = image_files(paths)
    read = [read_gray(f, image_size) for f in files]
    return files, np.stack([image[..., None] for image, _ in read]), [size for _, size in read]


def read_csv(path: pathlib.Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV file (or `.csv.gz`) that must have the `required` columns."""
    if not path.is_file():
        raise DataError(f"{path}: file is missing")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
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


def report_text(findings: str, impression: str) -> str:
    """The one `text` of a report: its FINDINGS and IMPRESSION sections, labelled, empty ones left out."""
    parts = [f"FINDINGS: {findings}" if findings else "", f"IMPRESSION: {impression}" if impression else ""]
    return " ".join(p for p in parts if p)


def header_size(path: pathlib.Path) -> tuple[int, int]:
    """(height, width) of an image file from its header alone (for coordinates when pixels are streamed)."""
    path = pathlib.Path(path)
    _require_file(path)
    try:
        if path.suffix.lower() == ".dcm":
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(ds.Rows), int(ds.Columns)
        with Image.open(path) as im:
            return im.height, im.width
    except Exception as e:  # PIL and pydicom raise several types for unreadable headers.
        raise DataError(f"{path}: cannot read the image header ({e})") from e


def _require_file(path: pathlib.Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: image file is missing")


def decode(path: pathlib.Path) -> np.ndarray:
    """An image file (PNG, JPEG, DICOM) as 8-bit grayscale [H, W] at its own size."""
    path = pathlib.Path(path)
    _require_file(path)
    if path.suffix.lower() == ".dcm":
        return _decode_dicom(path)
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


def _decode_dicom(path: pathlib.Path) -> np.ndarray:
    """8-bit display pixels of a grayscale DICOM: modality LUT, then VOI LUT or window, MONOCHROME1 inverted.

    With a VOI transform the window's output range maps to [0, 255] (what a viewer shows); without one an
    8-bit image is shown as stored and a deeper one by its own min–max.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
    except Exception as e:  # pydicom raises several types for corrupt files and missing pixel handlers.
        raise DataError(f"{path}: cannot decode DICOM ({e})") from e
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or stored.ndim != 2:
        raise DataError(f"{path}: expected a single-frame grayscale DICOM (MONOCHROME1/2), got "
                        f"{photometric or 'no PhotometricInterpretation'} with pixel shape {stored.shape}")
    bits, signed = int(ds.BitsStored), int(ds.get("PixelRepresentation", 0)) == 1
    extremes = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1])
    values, extremes = apply_modality_lut(stored, ds), apply_modality_lut(extremes, ds)
    if "VOILUTSequence" in ds:  # A lookup table indexes by integer values.
        values, extremes = np.round(values).astype(np.int64), np.round(extremes).astype(np.int64)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        values, extremes = apply_voi_lut(values, ds), apply_voi_lut(extremes, ds)
    elif bits > 8:  # No display transform for a deep image: its own range; 8-bit ones are shown as stored.
        extremes = np.array([values.min(), values.max()])
    low, high = np.sort(extremes.astype(np.float64))
    values = values.astype(np.float64)
    scaled = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    if photometric == "MONOCHROME1":  # 0 is white: invert so bone is bright as in every other source.
        scaled = 1.0 - scaled
    return np.round(scaled * 255).astype(np.uint8)
