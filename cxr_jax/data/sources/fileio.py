"""Reading images, masks and CSVs of a data layout, with errors that name the file and row."""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import logging
import math
import os
import pathlib
import re
import zlib
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

VALID_FRACTION = 0.2  # Share of a hash split that is `valid`.
ON_ERROR = ("raise", "skip")
# `file` of an example read from a prepared TFDS set (data.*.tfds_data_dir): `decode` reads its image from there.
RECORD_PREFIX = "tfds:"
# Decodes a RECORD_PREFIX reference to uint8 [H, W]; set by `cxr_jax.data.tfds_sets` (which imports this module,
# so this module cannot import it) before any reference exists.
_record_reader: Callable[[str], np.ndarray] | None = None


def register_record_reader(reader: Callable[[str], np.ndarray]) -> None:
    """Makes `decode` read RECORD_PREFIX references (prepared TFDS examples) with `reader`."""
    global _record_reader
    _record_reader = reader
STRING_KEYS = ("name", "text", "file", "report_findings", "report_impression")  # Stacked as object arrays of str.
# Larger images are refused from their header, before any pixel is decoded: no radiograph comes near 8192 × 8192,
# and a small file that claims more is a decompression bomb.
MAX_PIXELS = 8192 * 8192
MAX_CSV_BYTES = 2**30  # A (decompressed) CSV larger than this is refused rather than read into memory.

log = logging.getLogger("cxr_jax.data")


class DataError(ValueError):
    """A file, row or column of a data set is not what its layout requires."""


class Examples(dict):
    """A loader's arrays (keys in `sources/__init__.py`), plus `skipped`: why each left-out example was bad."""

    def __init__(self, arrays: dict, skipped: list[str] | None = None):
        super().__init__(arrays)
        self.skipped = list(skipped or [])


def collect(rows: Iterable[tuple[int, dict]], read_row: Callable[[int, dict], dict], *, spec, image_size: int | None,
            where: str) -> Examples | Originals:
    """Stacks `read_row(line, row)` over `rows` into arrays; reads `file` into `image` unless `spec.stream`.

    A `DataError` stops loading (`spec.on_error == 'raise'`) or leaves that example out and is counted
    (`'skip'`), so a bad file never becomes a silently wrong example. An image file listed by a second row is
    such an error too (under 'skip' the first row's example is kept). `where` names the set in the log line and,
    with the row, in errors that name only a file (an image that does not decode).

    With `image_size=None` nothing is stacked: the examples come one at a time (`Originals`), each image read at
    its original resolution, for `cxr_jax.data.tfds_sets.prepare` to store.
    """
    if spec.on_error not in ON_ERROR:
        raise DataError(f"data on_error must be one of {ON_ERROR}; got {spec.on_error!r}")
    skipped = []
    examples = _read_rows(rows, read_row, spec=spec, image_size=image_size, where=where, skipped=skipped)
    if image_size is None:
        return Originals(examples, skipped)
    return Examples(_stack(list(examples)), skipped)


class Originals:
    """A loader's examples one at a time at original resolution (`image_size=None`), and `skipped` so far.

    Images are uint8 [H, W] as decoded, masks uint8 [h, w] as 0/255 (1 × 1 where absent), landmarks and
    boxes in original pixels: `to_square` and `square_coords` turn them into exactly what the loader gives.
    """

    def __init__(self, examples: Iterator[dict], skipped: list[str]):
        self._examples, self.skipped = examples, skipped

    def __iter__(self) -> Iterator[dict]:
        return self._examples


def _read_rows(rows, read_row, *, spec, image_size: int | None, where: str, skipped: list[str]) -> Iterator[dict]:
    """`collect`'s examples, one at a time; bad ones are raised or appended to `skipped`."""
    seen, count = {}, 0
    for line, row in rows:
        try:
            example = read_row(line, row)
            key = os.path.normpath(example["file"]) if "file" in example else None
            if key in seen:
                raise DataError(f"{example['file']}: listed again in row {line} of {where} (first in row {seen[key]})")
            if "file" in example and (image_size is None or not spec.stream):
                example["image"], example["orig_size"] = read_gray(example["file"], image_size)
        except DataError as e:
            names_row = not line or re.search(rf"\brow {line}\b", str(e))
            if spec.on_error == "raise":
                if names_row:
                    raise
                raise DataError(f"{e} (row {line} of {where})") from e
            skipped.append(str(e) if names_row else f"{e} (row {line} of {where})")
            continue
        if key is not None:
            seen[key] = line
        count += 1
        yield example
    if skipped and not count:
        raise DataError(f"{where}: all {len(skipped)} examples are bad (on_error='skip'); first: {skipped[0]}")
    if skipped:
        log.warning("%s: skipped %d of %d examples (on_error='skip'); first: %s", where, len(skipped),
                    len(skipped) + count, skipped[0])


def first(rows: list, spec) -> list:
    """The `spec.num_examples` rows (all when it is 0) every loader keeps before reading: see `chosen_indices`."""
    return [rows[i] for i in chosen_indices(len(rows), spec)]


def chosen_indices(total: int, spec) -> list[int]:
    """Indices of the rows a capped split keeps, in order.

    The first `spec.num_examples`, or with `spec.sample_seed` ≥ 0 that many drawn at random with that seed (e.g.
    which images of a few-shot run are labelled, varied across seeds).
    """
    num = total if spec.num_examples <= 0 else min(spec.num_examples, total)
    seed = spec.get("sample_seed", -1)
    if seed < 0 or num == total:
        return list(range(num))
    return sorted(np.random.default_rng(seed).choice(total, num, replace=False).tolist())


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


def read_gray(path: pathlib.Path, image_size: int | None, *, mask: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """An 8-bit grayscale image padded to a square (centred) and resized; returns it and the original (h, w).

    Masks (`mask=True`) are resized with nearest neighbours and returned as 0/1; a mask stored as 0/1 rather
    than 0/255 is read as such. `image_size=None` keeps the original [H, W] (masks as 0/255), which
    `to_square` turns into exactly this function's result at any size.
    """
    array = decode(path)
    if mask and array.max() == 1:
        array = array * np.uint8(255)
    if image_size is None:
        return ((array > 127).astype(np.uint8) * np.uint8(255) if mask else array), array.shape
    return to_square(array, image_size, mask=mask)


def blank_mask(image_size: int | None) -> np.ndarray:
    """The mask of an example without one: zeros [S, S] (`image_size=None`: 1 × 1, which `to_square` enlarges)."""
    return np.zeros((image_size or 1, image_size or 1), np.uint8)


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


def from_square(array: np.ndarray, orig_size: tuple[int, int], *, mask: bool = False) -> np.ndarray:
    """The inverse of `to_square`: a square map [S, S] at the model's resolution on the original (h, w) grid.

    The map is resized to the padded square's side (bilinear, as float32; masks: nearest neighbours, their
    own dtype) and the padding cropped off, so pixel (x, y) of the result lies where `original_coords` puts it.
    """
    h, w = orig_size
    side = max(h, w)
    array = np.asarray(array) if mask else np.asarray(array, np.float32)
    if array.shape[0] != side:
        resample = Image.NEAREST if mask else Image.BILINEAR
        array = np.asarray(Image.fromarray(array).resize((side, side), resample))
    top, left = (side - h) // 2, (side - w) // 2
    return array[top:top + h, left:left + w]


def in_split(key: str, split: str) -> bool:
    """A deterministic split for layouts without one: ~VALID_FRACTION of keys are `valid`, the rest `train`."""
    if split == "all":
        return True
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 16**8
    return (bucket < VALID_FRACTION) == (split == "valid")


def square_coords(xy: np.ndarray, orig_size: tuple[int, int], image_size: int | None, *,
                  edges: bool = False) -> np.ndarray:
    """Maps (x, y) coordinates of an original image to those of its `read_gray` output.

    Points (landmarks) use pixel centres at integers; `edges=True` is for box corners, where pixel i spans
    [i, i + 1) (boxes are (x0, y0, x1, y1) with x1 exclusive, as the phantom writes them).
    """
    if image_size is None:  # Original resolution (`collect` with image_size=None): the points themselves.
        return np.asarray(xy, np.float32)
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
    """Rows of a UTF-8 CSV file (or `.csv.gz`; a byte-order mark is allowed) that must have the `required` columns.

    Extra columns are kept. A file that is not UTF-8, not CSV, larger than MAX_CSV_BYTES, has a column name twice,
    or has a row with fewer cells than its named columns or more non-empty cells than its header is an error naming
    the line: the table as a whole cannot be trusted, so this holds under `on_error='skip'` too. (Cells of unnamed
    columns, such as the one a trailing comma in the header makes, may be absent.)
    """
    if not path.is_file():
        raise DataError(f"{path}: file is missing")
    chunks, size = [], 0
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            while chunk := f.read(2**20):  # In chunks: read(MAX_CSV_BYTES) would allocate that much at once.
                size += len(chunk)
                if size > MAX_CSV_BYTES:
                    raise DataError(f"{path}: larger than {MAX_CSV_BYTES} bytes (fileio.MAX_CSV_BYTES)")
                chunks.append(chunk)
    except (OSError, EOFError, zlib.error) as e:  # gzip raises these for corrupt or truncated archives.
        raise DataError(f"{path}: cannot read ({e})") from e
    raw = b"".join(chunks)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not UTF-8 text (byte {raw[e.start]:#04x}); save it as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        names = reader.fieldnames or []
        missing = [c for c in required if c not in names]
        if missing:
            raise DataError(f"{path}: missing required column(s) {missing}; has {reader.fieldnames}")
        twice = sorted({c for c in names if c and names.count(c) > 1})
        if twice:
            raise DataError(f"{path}: column(s) {twice} appear more than once in the header")
        rows = []
        for row in reader:
            extra = row.pop(None, [])  # DictReader's key for cells beyond the header, and value for absent ones.
            absent = [c for c, cell in row.items() if cell is None]
            if any(absent) or any(cell.strip() for cell in extra):
                raise DataError(f"{path}: line {reader.line_num} has {len(row) - len(absent) + len(extra)} cells "
                                f"for the header's {len(names)} columns")
            rows.append({**row, **dict.fromkeys(absent, "")})
        return rows
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.reader.line_num}: not valid CSV ({e})") from e


def parse_number(path: pathlib.Path, line: int, column: str, text: str, kind=float):
    """A numeric cell, or an error naming the file, row and column; NaN and infinities are errors too."""
    try:
        value = kind(text)
    except ValueError:
        raise DataError(f"{path}: row {line}: {column} must be a {kind.__name__}, got {text!r}") from None
    if not math.isfinite(value):
        raise DataError(f"{path}: row {line}: {column} must be a finite number, got {text!r}")
    return value


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
    with _image_errors(path, "cannot read the image header"):
        if _is_dicom(path):
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            size = int(ds.Rows), int(ds.Columns)
        else:
            with Image.open(path) as im:
                size = im.height, im.width
    _check_pixels(path, *size)
    return size


def _require_file(path: pathlib.Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: image file is missing" if not path.exists() else
                        f"{path}: not a regular file (a directory, pipe or device)")


def _check_pixels(path: pathlib.Path, height: int, width: int, frames: int = 1) -> None:
    """An image's header must promise some pixels and at most MAX_PIXELS of them (decompression bombs)."""
    if min(height, width, frames) < 1:
        raise DataError(f"{path}: the header gives no pixels ({height} × {width}, {frames} frame(s))")
    if height * width * frames > MAX_PIXELS:
        raise DataError(f"{path}: {height} × {width} × {frames} frame(s) is over the {MAX_PIXELS}-pixel limit "
                        "(fileio.MAX_PIXELS); a decompression bomb, or not a radiograph")


_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # PNG, JPEG.


def _is_dicom(path: pathlib.Path) -> bool:
    """DICOM by content ('DICM' after the 128-byte preamble), or a `.dcm` name on a file that is not PNG/JPEG."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    if head[128:132] == b"DICM":
        return True
    return path.suffix.lower() == ".dcm" and not head.startswith(_IMAGE_SIGNATURES)


def decode(path: pathlib.Path) -> np.ndarray:
    """An image file (PNG, JPEG, DICOM, recognised by content) as 8-bit grayscale [H, W] at its own size.

    Colour images (RGB, CMYK, palette; alpha dropped) become their luminance; 16-bit, 32-bit and float images
    are shown by their own min–max, as deep DICOMs without a window are. Headers over MAX_PIXELS are refused
    before decoding.
    """
    if isinstance(path, str) and path.startswith(RECORD_PREFIX):  # An example of a prepared TFDS set.
        if _record_reader is None:
            raise DataError(f"{path}: a prepared-set record, but no reader is registered (cxr_jax.data.tfds_sets "
                            "registers one when it loads a set)")
        return _record_reader(path)
    path = pathlib.Path(path)
    _require_file(path)
    if _is_dicom(path):
        return _decode_dicom(path)
    with _image_errors(path, "cannot decode image"), Image.open(path) as im:
        _check_pixels(path, im.height, im.width)
        return _gray8(path, im)


@contextlib.contextmanager
def _image_errors(path: pathlib.Path, what: str):
    """PIL's and pydicom's many exception types for unreadable or oversized files as DataErrors naming `path`."""
    try:
        yield
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: too large to be a radiograph ({e})") from e
    except Exception as e:
        raise DataError(f"{path}: {what} ({e})") from e


def _gray8(path: pathlib.Path, im: Image.Image) -> np.ndarray:
    """The uint8 [H, W] of an opened PIL image in any mode (see `decode`)."""
    if im.mode == "L":
        return np.asarray(im)
    if im.mode.startswith(("I", "F")):  # I;16 (16-bit PNG), I (32-bit), F (float).
        return _min_max(path, np.asarray(im))
    return np.asarray(im.convert("L"))


def _min_max(path: pathlib.Path, values: np.ndarray) -> np.ndarray:
    """A deep image scaled to [0, 255] by its own range (a flat one is all 0)."""
    values = values.astype(np.float32)
    if not np.isfinite(values).all():
        raise DataError(f"{path}: the image has NaN or infinite pixels")
    low, high = values.min(), values.max()
    return np.round((values - low) / max(high - low, 1e-12) * 255).astype(np.uint8)


def _decode_dicom(path: pathlib.Path) -> np.ndarray:
    """8-bit display pixels of a grayscale DICOM: modality LUT, then VOI LUT or window, MONOCHROME1 inverted.

    With a VOI transform the window's output range maps to [0, 255] (what a viewer shows); without one an
    8-bit image is shown as stored and a deeper one by its own min–max. The header's size is checked against
    MAX_PIXELS before the pixels are decoded.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        size = int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as e:  # pydicom raises several types for corrupt files.
        raise DataError(f"{path}: cannot decode DICOM ({e})") from e
    _check_pixels(path, *size)
    try:
        return _dicom_display(path, ds)
    except DataError:
        raise
    except Exception as e:  # Missing pixel handlers, pixel data shorter than the header says, bad windows.
        raise DataError(f"{path}: cannot decode DICOM ({e})") from e


def _dicom_display(path: pathlib.Path, ds) -> np.ndarray:
    """The uint8 display pixels of a read dataset (see `_decode_dicom`)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    stored = ds.pixel_array
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
