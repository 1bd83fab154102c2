"""A corpus of hostile inputs (issue 25): each is read right, or is a `DataError` naming the file (and row).

Every input is written by the test. The outcome is in the test's name, so `pytest -v` prints the table:
  test_loads_correctly[case]     read, and read right (compared with what it should decode to)
  test_data_error[case]          a DataError (no other type) naming the file, and the CSV row or line where there
                                 is one, within seconds and without allocating more than a little memory; table-level
                                 cases (a CSV, archive or weights file that is bad as a whole) are loaded under
                                 on_error='skip', which cannot leave them out
  test_skipped_under_skip[case]  one bad row among good ones: 'raise' stops with a DataError naming the file and row,
                                 'skip' loads the good rows and records why the bad one was left out
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import signal
import struct
import tarfile
import time
import tracemalloc
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxr_jax import weights
from cxr_jax.data import sources, text
from cxr_jax.data.sources import fileio, public
from cxr_jax.data.sources.fileio import DataError
from tests.conftest import data_spec
from tests.data.test_mimic import _write_mimic
from tests.data.test_public_layouts import _write_chexpert
from tests.data.test_rsna_dicom import _write_rsna, write_dicom
from tests.data.test_shared_layouts import _write_jsrt

GRAY = np.add.outer(np.arange(24) * 5, np.arange(32) * 3).astype(np.uint8)  # A 24×32 ramp, 0..208.
DEEP = (np.add.outer(np.arange(24), np.arange(32)) * 61 + 1000).astype(np.uint16)  # 16-bit, 1000..4294.
MAX_SECONDS, MAX_TRACED_BYTES = 5.0, 64 * 2**20  # An error case's budget: no hang, no large allocation.
pytestmark = pytest.mark.filterwarnings(  # What pydicom and torch say about the hostile files on the way to failing.
    "ignore:End of file reached before delimiter:UserWarning", "ignore:Detected pickle protocol:UserWarning")

LOADS, ERRORS, SKIPS = {}, {}, {}


def _case(table, name):
    def register(build):
        assert name not in table, name
        table[name] = build
        return build
    return register


@pytest.fixture(autouse=True)
def _no_hang():
    """Every case fails, rather than hangs, after 20 s."""
    def stop(signum, frame):
        raise TimeoutError("a hostile input ran for 20 s")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --- Writers ---------------------------------------------------------------------------------------------------

def _mkdir(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _png(path, array=GRAY, **kwargs):
    Image.fromarray(array).save(_mkdir(path), format="PNG", **kwargs)
    return path


def _jpeg(path, image=None, **kwargs):
    (image or Image.fromarray(GRAY)).save(_mkdir(path), format="JPEG", quality=95, **kwargs)
    return path


def _truncate(path, fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(path, width, height):
    """A tiny 8-bit gray PNG whose header claims width × height (one compressed row of data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    _mkdir(path).write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(
        bytes(width + 1))) + _chunk(b"IEND", b""))
    return path


def _jpeg_header(path, width, height):
    """A small baseline JPEG whose frame header (SOF0) claims height × width."""
    data = bytearray(_jpeg(path).read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def _dicom(path, **changes):
    """A 12-bit MONOCHROME2 DICOM (64×64 ramp), with header fields changed after writing."""
    write_dicom(_mkdir(path), (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16))
    if changes:
        ds = pydicom.dcmread(path)
        for key, value in changes.items():
            setattr(ds, key, value)
        ds.save_as(path)
    return path


def _jpeg_dicom(path):
    write_dicom(_mkdir(path), GRAY, jpeg=True)
    return path


def _nih(root, rows, header="image,split,abnormal", good=("a", "c")):
    """A nih1000 layout: `rows` of CSV text under `header`; images/<g>.png written for each of `good`."""
    for name in good:
        _png(root / "images" / f"{name}.png")
    _mkdir(root / "metadata.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return root


def _nih_with_bad_b(root, write_b, name="b.png"):
    """nih1000 rows a (row 2), b (row 3, written by `write_b`), c (row 4); the good names are a and c."""
    _nih(root, ["images/a.png,train,1", f"images/{name},train,0", "images/c.png,train,0"])
    write_b(_mkdir(root / "images" / name))
    return data_spec("nih1000", root, "train"), ["images/a.png", "images/c.png"]


def _folder(root, rows, header="image,label"):
    _mkdir(root / "metadata.csv").write_text("\n".join([header, *rows]) + "\n")
    return data_spec("folder", root, "all")


def _tgz(path, members: dict[str, bytes]):
    with tarfile.open(_mkdir(path), "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


def _report(findings: str, encoding: str = "utf-8", declaration: bytes = b"") -> bytes:
    return declaration + (f'<eCitation><Abstract><AbstractText Label="FINDINGS">{findings}</AbstractText>'
                          "</Abstract></eCitation>").encode(encoding)


def _safetensors(path, header, data: bytes):
    encoded = json.dumps(header).encode()
    _mkdir(path).write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


F32 = {"dtype": "F32", "shape": [2]}  # 8 bytes.


class _RunsCode:
    """Unpickling this object runs code: it creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _load(spec, **changes):
    for key, value in changes.items():
        spec[key] = value
    return lambda: sources.load(spec, image_size=16, seed=0)


def _read(path):
    return lambda: fileio.read_gray(path, 16)


# --- Loads correctly -------------------------------------------------------------------------------------------

@_case(LOADS, "png_16bit_gray")
def _(tmp):
    path = tmp / "deep.png"
    Image.fromarray(DEEP).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
    want = np.round((DEEP.astype(np.float64) - DEEP.min()) / (DEEP.max() - DEEP.min()) * 255)
    got = fileio.decode(path)
    np.testing.assert_allclose(got, want, atol=1)  # Its own min–max onto 0..255, as a deep DICOM without a window.
    assert got.min() == 0 and got.max() == 255


@_case(LOADS, "jpeg_cmyk")
def _(tmp):
    zero = Image.new("L", GRAY.shape[::-1], 0)
    cmyk = Image.merge("CMYK", (zero, zero, zero, Image.fromarray(255 - GRAY)))
    path = _jpeg(tmp / "cmyk.jpg", cmyk)
    with Image.open(path) as im:
        assert im.mode == "CMYK"
    got = fileio.decode(path).astype(int)
    assert np.abs(got - GRAY).max() <= 8 and np.abs(got - GRAY).mean() < 2  # JPEG's loss only.


@_case(LOADS, "png_rgb_gray_content")
def _(tmp):
    np.testing.assert_array_equal(fileio.decode(_png(tmp / "rgb.png", np.stack([GRAY] * 3, -1))), GRAY)


@_case(LOADS, "png_palette")
def _(tmp):
    path = tmp / "p.png"
    Image.fromarray(GRAY).convert("P").save(path)
    np.testing.assert_array_equal(fileio.decode(path), GRAY)


@_case(LOADS, "png_gray_with_alpha")
def _(tmp):
    path = tmp / "la.png"
    Image.fromarray(np.stack([GRAY, np.full_like(GRAY, 7)], -1), "LA").save(path)
    np.testing.assert_array_equal(fileio.decode(path), GRAY)


@_case(LOADS, "png_1bit")
def _(tmp):
    path = tmp / "one.png"
    Image.fromarray(GRAY > 100).save(path)
    np.testing.assert_array_equal(fileio.decode(path), (GRAY > 100) * 255)


@_case(LOADS, "png_named_jpg")
def _(tmp):
    np.testing.assert_array_equal(fileio.decode(_png(tmp / "x.jpg")), GRAY)


@_case(LOADS, "jpeg_named_png")
def _(tmp):
    path = _jpeg(tmp / "x.png")
    np.testing.assert_array_equal(fileio.decode(path), np.asarray(Image.open(path)))
    assert np.abs(fileio.decode(path).astype(int) - GRAY).max() <= 8


@_case(LOADS, "png_named_dcm")
def _(tmp):
    np.testing.assert_array_equal(fileio.decode(_png(tmp / "x.dcm")), GRAY)


@_case(LOADS, "dicom_named_png")
def _(tmp):
    dicom = _dicom(tmp / "x.dcm")
    (tmp / "x.png").write_bytes(dicom.read_bytes())
    np.testing.assert_array_equal(fileio.decode(tmp / "x.png"), fileio.decode(dicom))
    assert fileio.header_size(tmp / "x.png") == (64, 64)


@_case(LOADS, "png_truncated_after_pixels")
def _(tmp):
    path = _png(tmp / "x.png")
    path.write_bytes(path.read_bytes()[:-12])  # IEND gone: every pixel is still there.
    np.testing.assert_array_equal(fileio.decode(path), GRAY)


@_case(LOADS, "png_unicode_space_path")
def _(tmp):
    path = _png(tmp / "dätä sét" / "ü b 🫁.png")
    image, size = fileio.read_gray(path, 32)
    assert size == (24, 32) and image.shape == (32, 32)
    files, images, _ = fileio.read_images([tmp / "dätä sét"], 32)
    assert files == [path] and images.shape == (1, 32, 32, 1)


@_case(LOADS, "dicom_unicode_space_path")
def _(tmp):
    path = _dicom(tmp / "ünï cödé" / "a b.dcm")
    assert fileio.decode(path).shape == (64, 64) and fileio.header_size(path) == (64, 64)


@_case(LOADS, "mask_png_saved_as_0_1")
def _(tmp):
    mask = (GRAY > 100).astype(np.uint8)
    np.testing.assert_array_equal(fileio.read_gray(_png(tmp / "m.png", mask), 32, mask=True)[0][4:28], mask)


@_case(LOADS, "csv_utf8_bom")
def _(tmp):
    root = _nih(tmp, ["images/a.png,train,1", "images/c.png,train,0"])
    (root / "metadata.csv").write_bytes(b"\xef\xbb\xbf" + (root / "metadata.csv").read_bytes())
    assert list(_load(data_spec("nih1000", root, "train"))()["name"]) == ["images/a.png", "images/c.png"]


@_case(LOADS, "csv_crlf_and_blank_lines")
def _(tmp):
    root = _nih(tmp, [])
    (root / "metadata.csv").write_bytes(b"image,split,abnormal\r\n\r\nimages/a.png,train,1\r\n\r\n"
                                        b"images/c.png,train,0\r\n\r\n")
    data = _load(data_spec("nih1000", root, "train"))()
    assert list(data["name"]) == ["images/a.png", "images/c.png"] and list(data["label"]) == [1, 0]


@_case(LOADS, "csv_extra_columns")
def _(tmp):
    root = _nih(tmp, ["images/a.png,train,1,Ünïcode note,x", "images/c.png,train,0,,y"],
                header="image,split,abnormal,comment,other")
    data = _load(data_spec("nih1000", root, "train"))()
    assert list(data["label"]) == [1, 0] and data["image"].shape == (2, 16, 16, 1)


@_case(LOADS, "csv_trailing_empty_cells")
def _(tmp):
    root = _nih(tmp, ["images/a.png,train,1,,", "images/c.png,train,0,"])
    assert list(_load(data_spec("nih1000", root, "train"))()["label"]) == [1, 0]


@_case(LOADS, "csv_trailing_comma_in_header_only")
def _(tmp):
    root = _nih(tmp, ["images/a.png,train,1", "images/c.png,train,0,"], header="image,split,abnormal,")
    assert list(_load(data_spec("nih1000", root, "train"))()["label"]) == [1, 0]  # As NIH's Data_Entry_2017.csv.


@_case(LOADS, "csv_quoted_commas_and_newlines_in_notes")
def _(tmp):
    rows = ['images/a.png,,p1,COVID-19,"Fever, cough.\nBilateral ""ground-glass"" opacities."',
            "images/c.png,,p2,No Finding,"]
    for name in "ac":
        _png(tmp / "images" / f"{name}.png")
    (tmp / "metadata.csv").write_text("\n".join(["image,lung_mask,patient_id,finding,clinical_notes", *rows]) + "\n")
    data = _load(data_spec("covid", tmp, "all"))()
    assert list(data["text"]) == ['Fever, cough.\nBilateral "ground-glass" opacities.', ""]  # The second is empty.
    tokenizer = text.Tokenizer([*text.SPECIALS, "fever"])
    tokens, counts = text.encode_sentences(tokenizer, list(data["text"]), max_length=6, max_sentences=2)
    assert list(counts) == [2, 1] and list(tokens[1, 0]) == [2, 3, 0, 0, 0, 0]  # An empty note: [CLS] [SEP].


@_case(LOADS, "layout_unicode_space_paths")
def _(tmp):
    root = tmp / "dätä sét"
    _png(root / "ïmages dir" / "ü b.png")
    _png(root / "ïmages dir" / "日本 語.png", 255 - GRAY)
    (root / "metadata.csv").write_text("image,split,abnormal\nïmages dir/ü b.png,train,1\n"
                                       "ïmages dir/日本 語.png,train,0\n")
    data = _load(data_spec("nih1000", root, "train"))()
    assert list(data["name"]) == ["ïmages dir/ü b.png", "ïmages dir/日本 語.png"]
    streamed = _load(data_spec("nih1000", root, "train", stream=True))()
    np.testing.assert_array_equal(fileio.read_gray(streamed["file"][1], 16)[0], data["image"][1, ..., 0])


@_case(LOADS, "report_file_not_utf8")
def _(tmp):
    _write_mimic(tmp)
    (tmp / "files/p10/p10000032/s50414267.txt").write_bytes(
        "FINDINGS: Small left pleural effusion, caf\xe9 note.\n\nIMPRESSION: Effusion.\n".encode("latin-1"))
    data = _load(data_spec("mimic", tmp, "train"))()
    assert data["report_findings"][0] == "Small left pleural effusion, caf\ufffd note."  # One byte replaced.
    assert data["report_impression"][0] == "Effusion."
    tokenizer = text.Tokenizer([*text.SPECIALS, "caf", "note", "."])
    assert tokenizer.tokenize(data["report_findings"][0])[-3:] == ["caf", "note", "."]  # U+FFFD is dropped.


@_case(LOADS, "report_file_empty")
def _(tmp):
    _write_mimic(tmp)
    (tmp / "files/p10/p10000032/s50414267.txt").write_bytes(b"")
    data = _load(data_spec("mimic", tmp, "train"))()
    assert list(data["text"]) == ["", "IMPRESSION: No acute cardiopulmonary process."]


@_case(LOADS, "iu_report_latin1_declared")
def _(tmp):
    declaration = b'<?xml version="1.0" encoding="ISO-8859-1"?>'
    _tgz(tmp / "NLMCXR_reports.tgz", {"r/1.xml": _report("Caf\xe9 sign.", "latin-1", declaration)})
    assert list(_load(data_spec("iu_reports", tmp, "all"))()["report_findings"]) == ["Caf\xe9 sign."]


@_case(LOADS, "vocab_unicode_line_separator")
def _(tmp):
    path = tmp / "vocab.txt"
    path.write_text("\n".join([*text.SPECIALS, "a\u2028b", "c"]) + "\n", encoding="utf-8")
    tokenizer = text.Tokenizer.from_file(path)
    assert tokenizer.vocab[-2:] == ["a\u2028b", "c"]  # One token per line, as transformers reads vocab.txt.


@_case(LOADS, "safetensors_metadata_and_empty_tensor")
def _(tmp):
    from safetensors.numpy import save_file

    arrays = {"empty": np.zeros((0, 3), np.float32), "w": np.arange(6, dtype=np.float16).reshape(2, 3)}
    save_file(arrays, str(tmp / "x.safetensors"), metadata={"format": "pt"})
    got = weights.read_state_dict(tmp / "x.safetensors")
    assert got.keys() == arrays.keys() and got["empty"].shape == (0, 3)
    np.testing.assert_array_equal(got["w"], arrays["w"])


# --- DataError naming the file ---------------------------------------------------------------------------------

def _bad_file(name, write, file, parts):
    """A case: `write(path)` makes the hostile file; `read_gray` must fail with `parts` in its message."""
    @_case(ERRORS, name)
    def _(tmp, mp):
        write(tmp / file)
        return _read(tmp / file), [file, *parts]


def _empty(path):
    path.write_bytes(b"")


_bad_file("png_zero_byte", _empty, "z.png", ["cannot decode image"])
_bad_file("jpeg_zero_byte", _empty, "z.jpg", ["cannot decode image"])
_bad_file("dicom_zero_byte", _empty, "z.dcm", ["cannot decode DICOM"])
_bad_file("png_truncated_half", lambda p: _truncate(_png(p)), "t.png", ["cannot decode image", "truncated"])
_bad_file("jpeg_truncated_half", lambda p: _truncate(_jpeg(p)), "t.jpg", ["cannot decode image", "truncated"])
_bad_file("dicom_truncated_half", lambda p: _truncate(_dicom(p)), "t.dcm", ["cannot decode DICOM", "less than"])
_bad_file("dicom_truncated_header", lambda p: _truncate(_dicom(p), 0.05), "t.dcm", ["cannot decode DICOM"])
_bad_file("dicom_jpeg_truncated", lambda p: _truncate(_jpeg_dicom(p), 0.7), "t.dcm", ["cannot decode DICOM"])


@_case(ERRORS, "png_bomb_40000x40000")
def _(tmp, mp):
    return _read(_png_header(tmp / "bomb.png", 40000, 40000)), ["bomb.png", "too large to be a radiograph"]


@_case(ERRORS, "png_bomb_just_over_limit")
def _(tmp, mp):
    return _read(_png_header(tmp / "bomb.png", 8193, 8192)), ["bomb.png", "8192 × 8193", "pixel limit"]


@_case(ERRORS, "png_bomb_header_size")
def _(tmp, mp):
    path = _png_header(tmp / "bomb.png", 9000, 9000)
    return lambda: fileio.header_size(path), ["bomb.png", "pixel limit"]


@_case(ERRORS, "jpeg_bomb_40000x40000")
def _(tmp, mp):
    return _read(_jpeg_header(tmp / "bomb.jpg", 40000, 40000)), ["bomb.jpg", "too large to be a radiograph"]


@_case(ERRORS, "dicom_bomb_40000x40000")
def _(tmp, mp):
    return _read(_dicom(tmp / "bomb.dcm", Rows=40000, Columns=40000)), ["bomb.dcm", "40000 × 40000", "pixel limit"]


@_case(ERRORS, "dicom_jpeg_bomb_40000x40000")
def _(tmp, mp):
    path = _jpeg_dicom(tmp / "bomb.dcm")
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 40000
    ds.save_as(path)
    return _read(path), ["bomb.dcm", "pixel limit"]  # pydicom would allocate 1.6 GB before decoding.


@_case(ERRORS, "png_text_chunk_bomb")
def _(tmp, mp):
    data = _png(tmp / "x.png").read_bytes()
    ztxt = _chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"a" * 20_000_000, 9))  # 20 MB of text in 20 kB.
    (tmp / "x.png").write_bytes(data[:33] + ztxt + data[33:])
    return _read(tmp / "x.png"), ["x.png", "cannot decode image"]


@_case(ERRORS, "png_zero_width")
def _(tmp, mp):
    return _read(_png_header(tmp / "flat.png", 0, 10)), ["flat.png", "cannot decode image"]


@_case(ERRORS, "text_named_png")
def _(tmp, mp):
    (tmp / "notes.png").write_text("FINDINGS: none.")
    return _read(tmp / "notes.png"), ["notes.png", "cannot decode image"]


@_case(ERRORS, "text_named_dcm")
def _(tmp, mp):
    (tmp / "notes.dcm").write_text("FINDINGS: none." * 20)
    return _read(tmp / "notes.dcm"), ["notes.dcm", "cannot decode DICOM"]


@_case(ERRORS, "dicom_window_width_zero")
def _(tmp, mp):
    return _read(_dicom(tmp / "w.dcm", WindowCenter=100, WindowWidth=0)), ["w.dcm", "Window Width"]


@_case(ERRORS, "dicom_window_not_a_number")
def _(tmp, mp):
    path = _dicom(tmp / "w.dcm", WindowCenter=1234, WindowWidth=500)
    path.write_bytes(path.read_bytes().replace(b"1234", b"abcd"))
    return _read(path), ["w.dcm", "cannot decode DICOM"]


@_case(ERRORS, "dicom_rgb")
def _(tmp, mp):
    path = _dicom(tmp / "c.dcm", PhotometricInterpretation="RGB")
    return _read(path), ["c.dcm", "expected a single-frame grayscale DICOM"]


@_case(ERRORS, "directory_named_png")
def _(tmp, mp):
    (tmp / "d.png").mkdir()
    return _read(tmp / "d.png"), ["d.png", "not a regular file"]


@_case(ERRORS, "fifo_named_png")
def _(tmp, mp):
    os.mkfifo(tmp / "f.png")  # Opening it would block forever.
    return _read(tmp / "f.png"), ["f.png", "not a regular file"]


@_case(ERRORS, "read_images_folder_with_truncated_png")
def _(tmp, mp):
    _png(tmp / "in" / "a.png")
    _truncate(_png(tmp / "in" / "b b.png"))
    return lambda: fileio.read_images([tmp / "in"], 16), ["b b.png", "cannot decode image"]


@_case(ERRORS, "csv_not_utf8")
def _(tmp, mp):
    _nih(tmp, [])
    (tmp / "metadata.csv").write_bytes(b"image,split,abnormal\nimages/a.png,train,1\nimages/b\xe9.png,train,0\n")
    return _load(data_spec("nih1000", tmp, "train", on_error="skip")), ["metadata.csv", "line 3 is not UTF-8"]


@_case(ERRORS, "csv_missing_column")
def _(tmp, mp):
    _nih(tmp, ["images/a.png,train"], header="image,split")
    return _load(data_spec("nih1000", tmp, "train", on_error="skip")), ["metadata.csv",
                                                                         "missing required column(s) ['abnormal']"]


@_case(ERRORS, "csv_zero_byte")
def _(tmp, mp):
    _nih(tmp, [])
    (tmp / "metadata.csv").write_bytes(b"")
    return _load(data_spec("nih1000", tmp, "train", on_error="skip")), ["metadata.csv", "missing required column"]


@_case(ERRORS, "csv_short_row")
def _(tmp, mp):
    _nih(tmp, ["images/a.png,train,1", "images/c.png,train"])
    return _load(data_spec("nih1000", tmp, "train", on_error="skip")), [
        "metadata.csv", "line 3 has 2 cells for the header's 3 columns"]


@_case(ERRORS, "csv_duplicate_column")
def _(tmp, mp):
    _nih(tmp, ["images/a.png,train,1,0"], header="image,split,abnormal,abnormal")
    return _load(data_spec("nih1000", tmp, "train", on_error="skip")), [
        "metadata.csv", "column(s) ['abnormal'] appear more than once"]


@_case(ERRORS, "csv_unquoted_comma_in_path")
def _(tmp, mp):
    _nih(tmp, ["images/a.png,train,1", "images/c,d.png,train,0"])
    return _load(data_spec("nih1000", tmp, "train", on_error="skip")), ["metadata.csv", "line 3 has 4 cells"]


@_case(ERRORS, "csv_field_over_csv_limit")
def _(tmp, mp):
    _folder(tmp, ["a.png,1,short", f'c.png,0,"{"x" * 200_000}"'], header="image,label,text")
    return _load(data_spec("folder", tmp, "all", on_error="skip")), ["metadata.csv", "line 3", "not valid CSV"]


@_case(ERRORS, "csv_gz_truncated")
def _(tmp, mp):
    with gzip.open(tmp / "x.csv.gz", "wt") as f:
        f.write("dicom_id,split\n" + "".join(f"d{i},train\n" for i in range(2000)))
    _truncate(tmp / "x.csv.gz")
    return lambda: fileio.read_csv(tmp / "x.csv.gz", ("dicom_id",)), ["x.csv.gz", "cannot read"]


@_case(ERRORS, "csv_gz_bomb")
def _(tmp, mp):
    mp.setattr(fileio, "MAX_CSV_BYTES", 2**20)  # A 1 MiB limit stands in for the real 1 GiB.
    with gzip.open(tmp / "x.csv.gz", "wb") as f:
        f.write(b"dicom_id,split\n" + b"\n" * 8 * 2**20)
    return lambda: fileio.read_csv(tmp / "x.csv.gz", ("dicom_id",)), ["x.csv.gz", "larger than 1048576 bytes"]


@_case(ERRORS, "rsna_box_nan")
def _(tmp, mp):
    _write_rsna(tmp)
    labels = tmp / "stage_2_train_labels.csv"
    labels.write_text(labels.read_text().replace("p-opacity,8,", "p-opacity,nan,"))
    return _load(data_spec("rsna", tmp, "all", on_error="skip")), [
        "stage_2_train_labels.csv", "row 3", "x must be a finite number, got 'nan'"]


@_case(ERRORS, "iu_reports_tgz_zero_byte")
def _(tmp, mp):
    (tmp / "NLMCXR_reports.tgz").write_bytes(b"")
    return _load(data_spec("iu_reports", tmp, "all", on_error="skip")), ["NLMCXR_reports.tgz", "not a readable"]


@_case(ERRORS, "iu_reports_tgz_truncated")
def _(tmp, mp):
    _truncate(_tgz(tmp / "NLMCXR_reports.tgz", {f"r/{i}.xml": _report(f"note {i} " * 50) for i in range(20)}))
    return _load(data_spec("iu_reports", tmp, "all", on_error="skip")), ["NLMCXR_reports.tgz", "not a readable"]


@_case(ERRORS, "iu_reports_all_empty")
def _(tmp, mp):
    _tgz(tmp / "NLMCXR_reports.tgz", {"r/1.xml": _report(""), "r/2.xml": b""})
    return _load(data_spec("iu_reports", tmp, "all", on_error="skip")), [
        "NLMCXR_reports.tgz", "no report with a FINDINGS or IMPRESSION", "r/2.xml"]


@_case(ERRORS, "mimic_reports_zip_corrupt")
def _(tmp, mp):
    _write_mimic(tmp)
    _truncate(tmp / "mimic-cxr-reports.zip")
    return _load(data_spec("mimic", tmp, "train", on_error="skip")), ["mimic-cxr-reports.zip", "not a readable zip"]


@_case(ERRORS, "vocab_not_utf8")
def _(tmp, mp):
    (tmp / "vocab.txt").write_bytes("\n".join([*text.SPECIALS, "caf\xe9"]).encode("latin-1"))
    return lambda: text.Tokenizer.from_file(tmp / "vocab.txt"), ["vocab.txt", "line 6 is not UTF-8"]


@_case(ERRORS, "vocab_zero_byte")
def _(tmp, mp):
    (tmp / "vocab.txt").write_bytes(b"")
    return lambda: text.Tokenizer.from_file(tmp / "vocab.txt"), ["vocab.txt", "lacks the special tokens"]


def _pickle_runs_code(tmp, legacy: bool):
    torch = pytest.importorskip("torch")
    path, marker = tmp / "evil.pth", tmp / "pwned"
    payload = {"conv1.weight": torch.zeros(2), "x": _RunsCode(marker)}
    if legacy:
        path.write_bytes(pickle.dumps(payload))
        pickle.loads(path.read_bytes())  # The input is truly hostile: a plain unpickler runs its code.
    else:
        torch.save(payload, path)
        torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()

    def call():
        try:
            weights.read_state_dict(path)
        finally:
            assert not marker.exists(), "reading the weights ran the pickle's code"
    return call, ["evil.pth", "not a readable PyTorch state dict", "Weights only load failed"]


@_case(ERRORS, "pth_pickle_runs_code")
def _(tmp, mp):
    return _pickle_runs_code(tmp, legacy=False)


@_case(ERRORS, "pth_legacy_pickle_runs_code")
def _(tmp, mp):
    return _pickle_runs_code(tmp, legacy=True)


@_case(ERRORS, "pth_zero_byte")
def _(tmp, mp):
    pytest.importorskip("torch")
    (tmp / "w.pth").write_bytes(b"")
    return lambda: weights.read_state_dict(tmp / "w.pth"), ["w.pth", "not a readable PyTorch state dict"]


@_case(ERRORS, "pth_truncated")
def _(tmp, mp):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.arange(1000.0)}, tmp / "w.pth")
    _truncate(tmp / "w.pth")
    return lambda: weights.read_state_dict(tmp / "w.pth"), ["w.pth", "not a readable PyTorch state dict"]


@_case(ERRORS, "pth_non_tensor_values")
def _(tmp, mp):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.zeros(2), "epoch": 3, "note": "x"}, tmp / "w.pth")
    return lambda: weights.read_state_dict(tmp / "w.pth"), ["w.pth", "['epoch', 'note'] are not tensors"]


@_case(ERRORS, "pth_not_a_dict")
def _(tmp, mp):
    torch = pytest.importorskip("torch")
    torch.save([torch.zeros(2)], tmp / "w.pth")
    return lambda: weights.read_state_dict(tmp / "w.pth"), ["w.pth", "expected a state dict", "got list"]


def _safetensors_case(name, header, data, message):
    @_case(ERRORS, name)
    def _(tmp, mp):
        path = _safetensors(tmp / "w.safetensors", header, data)
        return lambda: weights.read_state_dict(path), ["w.safetensors", message]


_safetensors_case("safetensors_offsets_past_end", {"a": {**F32, "data_offsets": [0, 8]},
                                                   "b": {**F32, "data_offsets": [8, 16]}}, bytes(12),
                  "'b' has data_offsets [8, 16] outside the 12-byte data buffer")
_safetensors_case("safetensors_offsets_overlap", {"a": {**F32, "data_offsets": [0, 8]},
                                                  "b": {**F32, "data_offsets": [4, 12]}}, bytes(12),
                  "'b' starts at byte 4 of the data, expected 8 (overlaps the previous tensor)")
_safetensors_case("safetensors_offsets_alias", {"a": {**F32, "data_offsets": [0, 8]},
                                                "b": {**F32, "data_offsets": [0, 8]}}, bytes(8), "overlaps")
_safetensors_case("safetensors_gap_between_tensors", {"a": {**F32, "data_offsets": [0, 8]},
                                                      "b": {**F32, "data_offsets": [12, 20]}}, bytes(20), "a gap")
_safetensors_case("safetensors_unindexed_tail", {"a": {**F32, "data_offsets": [0, 8]}}, bytes(64),
                  "cover 8 of the 64 data bytes")
_safetensors_case("safetensors_offsets_disagree_with_shape", {"a": {"dtype": "F32", "shape": [3],
                                                                    "data_offsets": [0, 8]}}, bytes(8),
                  "8 bytes for shape [3] of F32")
_safetensors_case("safetensors_header_not_an_object", [1, 2], b"", "not a safetensors file (the header is a JSON list")
_safetensors_case("safetensors_entry_without_dtype", {"a": {"shape": [2], "data_offsets": [0, 8]}}, bytes(8),
                  "'a' has a malformed header entry")
_safetensors_case("safetensors_negative_shape", {"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}},
                  bytes(8), "'a' has a malformed header entry")
_safetensors_case("safetensors_unknown_dtype", {"a": {"dtype": "F8_E9", "shape": [8], "data_offsets": [0, 8]}},
                  bytes(8), "unsupported dtype F8_E9")


@_case(ERRORS, "safetensors_header_length_past_end")
def _(tmp, mp):
    (tmp / "w.safetensors").write_bytes(struct.pack("<Q", 2**62) + b'{"a": 1}')
    return lambda: weights.read_state_dict(tmp / "w.safetensors"), ["w.safetensors", "runs past the end"]


@_case(ERRORS, "safetensors_zero_byte")
def _(tmp, mp):
    (tmp / "w.safetensors").write_bytes(b"")
    return lambda: weights.read_state_dict(tmp / "w.safetensors"), ["w.safetensors", "not a safetensors file"]


@_case(ERRORS, "bert_config_not_json")
def _(tmp, mp):
    (tmp / "config.json").write_bytes(b"{'vocab_size': 30522,")
    return lambda: weights.load_bert(tmp), ["config.json", "not valid JSON"]


@_case(ERRORS, "bert_config_missing_keys")
def _(tmp, mp):
    (tmp / "config.json").write_text(json.dumps({"vocab_size": 10, "num_hidden_layers": 2}))
    return lambda: weights.load_bert(tmp), ["config.json", "missing ['hidden_size', 'num_attention_heads'"]


# --- Left out under on_error='skip' ----------------------------------------------------------------------------

def _nih_bad_image(name, write_b, parts, file="b.png"):
    @_case(SKIPS, name)
    def _(tmp):
        spec, good = _nih_with_bad_b(tmp, write_b, file)
        return spec, [file, "row 3 of nih1000 train", *parts], good


_nih_bad_image("png_zero_byte_in_layout", lambda p: p.write_bytes(b""), ["cannot decode image"])
_nih_bad_image("png_truncated_in_layout", lambda p: _truncate(_png(p)), ["cannot decode image"])
_nih_bad_image("jpeg_truncated_in_layout", lambda p: _truncate(_jpeg(p)), ["cannot decode image"], "b.jpg")
_nih_bad_image("png_bomb_in_layout", lambda p: _png_header(p, 40000, 40000), ["too large to be a radiograph"])
_nih_bad_image("text_named_png_in_layout", lambda p: p.write_text("hello"), ["cannot decode image"])
_nih_bad_image("directory_named_png_in_layout", lambda p: p.mkdir(), ["not a regular file"])
_nih_bad_image("fifo_named_png_in_layout", lambda p: os.mkfifo(p), ["not a regular file"])


def _nih_bad_row(name, row, parts):
    @_case(SKIPS, name)
    def _(tmp):
        _nih(tmp, ["images/a.png,train,1", row, "images/c.png,train,0"], good="abc")
        return data_spec("nih1000", tmp, "train"), parts, ["images/a.png", "images/c.png"]


_nih_bad_row("csv_label_nan", "images/b.png,train,nan", ["metadata.csv", "row 3: abnormal must be 0 or 1, got 'nan'"])
_nih_bad_row("csv_label_out_of_range", "images/b.png,train,2", ["metadata.csv", "row 3: abnormal must be 0 or 1"])
_nih_bad_row("csv_label_blank", "images/b.png,train,", ["metadata.csv", "row 3: abnormal must be 0 or 1, got ''"])
_nih_bad_row("csv_nul_in_path", "images/b\x00.png,train,0", ["b\x00.png", "row 3 of nih1000 train", "missing"])
_nih_bad_row("csv_image_is_the_folder", "images,train,0", ["images", "row 3 of nih1000 train", "not a regular file"])


@_case(SKIPS, "csv_duplicated_image")
def _(tmp):
    _nih(tmp, ["images/a.png,train,1", "images/a.png,train,0", "images/c.png,train,0"])
    return data_spec("nih1000", tmp, "train"), ["a.png", "listed again in row 3 of nih1000 train (first in row 2)"], [
        "images/a.png", "images/c.png"]


@_case(SKIPS, "csv_duplicated_image_respelled")
def _(tmp):
    _nih(tmp, ["images/a.png,train,1", "images/c.png,train,0", "images/../images/a.png,train,1"])
    return data_spec("nih1000", tmp, "train"), ["a.png", "listed again in row 4", "(first in row 2)"], [
        "images/a.png", "images/c.png"]


def _chexpert_bad_cell(name, value, parts):
    @_case(SKIPS, name)
    def _(tmp):
        root = _write_chexpert(tmp)
        lines = (root / "train.csv").read_text().splitlines()
        cells = lines[2].split(",")
        cells[5 + public.CHEXPERT_OBSERVATIONS.index("Cardiomegaly")] = value
        lines[2] = ",".join(cells)
        (root / "train.csv").write_text("\n".join(lines) + "\n")
        good = [f"CheXpert-v1.0-small/train/{p}/s1/view1_frontal.jpg" for p in ("p1", "p3")]
        return data_spec("chexpert", root, "train"), ["train.csv", "row 3: Cardiomegaly", *parts], good


_chexpert_bad_cell("chexpert_label_nan", "nan", ["must be a finite number, got 'nan'"])
_chexpert_bad_cell("chexpert_label_out_of_range", "2.0", ["must be 1, 0, -1 or blank, got '2.0'"])
_chexpert_bad_cell("chexpert_label_text", "yes", ["must be a float, got 'yes'"])


def _jsrt_bad_b(name, change, parts):
    @_case(SKIPS, name)
    def _(tmp):
        _write_jsrt(tmp)
        change(tmp)
        return data_spec("jsrt", tmp, "all"), parts, ["images/A.png"]


def _jsrt_row_b(tmp, **cells):
    header, a, b = (tmp / "metadata.csv").read_text().splitlines()
    names, values = header.split(","), b.split(",")
    for key, value in cells.items():
        values[names.index(key)] = value
    (tmp / "metadata.csv").write_text("\n".join([header, a, ",".join(values)]) + "\n")


_jsrt_bad_b("jsrt_nodule_out_of_range", lambda t: _jsrt_row_b(t, nodule="2"),
            ["metadata.csv", "row 3: nodule must be 0 or 1, got '2'"])
_jsrt_bad_b("jsrt_nodule_centre_nan", lambda t: _jsrt_row_b(t, nodule="1", nodule_x="nan", nodule_y="3",
                                                            nodule_diameter_px="4"),
            ["metadata.csv", "row 3: nodule_x must be a finite number, got 'nan'"])
_jsrt_bad_b("jsrt_mask_truncated", lambda t: _truncate(t / "masks/heart/B.png"),
            ["masks/heart/B.png", "cannot decode image", "row 3 of jsrt all"])


def _folder_bad_b(name, write_b, parts, file="b.dcm", label="0", mask="", named=""):
    """A folder layout: a.png (row 2), `file` (row 3, written by `write_b`, with `label` and `mask`), c.png."""
    @_case(SKIPS, name)
    def _(tmp):
        _png(tmp / "a.png")
        _png(tmp / "c.png")
        write_b(tmp / file)
        rows = ["a.png,1,", f"{file},{label},{mask}", "c.png,0,"]
        return _folder(tmp, rows, "image,label,mask"), [named or mask or file, "row 3", *parts], ["a.png", "c.png"]


_folder_bad_b("dicom_truncated_in_layout", lambda p: _truncate(_dicom(p)), ["cannot decode DICOM"])
_folder_bad_b("dicom_bomb_in_layout", lambda p: _dicom(p, Rows=40000, Columns=40000), ["pixel limit"])
_folder_bad_b("dicom_window_width_zero_in_layout", lambda p: _dicom(p, WindowCenter=9, WindowWidth=0),
              ["Window Width"])
_folder_bad_b("folder_label_nan", _png, ["label must be 0, 1 or blank, got 'nan'"], file="b.png", label="nan",
              named="metadata.csv")
_folder_bad_b("folder_mask_missing", _png, ["image file is missing"], file="b.png", mask="m/b.png")


@_case(SKIPS, "rsna_dicom_truncated")
def _(tmp):
    _write_rsna(tmp)
    _truncate(tmp / "stage_2_train_images/p-other.dcm", 0.8)
    return data_spec("rsna", tmp, "all"), ["p-other.dcm", "row 5 of rsna all", "cannot decode DICOM"], [
        "p-normal", "p-opacity", "p-noclass"]


def _iu_bad_2(name, report, parts):
    @_case(SKIPS, name)
    def _(tmp):
        bad = report() if callable(report) else report
        _tgz(tmp / "NLMCXR_reports.tgz", {"r/1.xml": _report("Clear."), "r/2.xml": bad, "r/3.xml": _report("Ok.")})
        return data_spec("iu_reports", tmp, "all"), ["NLMCXR_reports.tgz:r/2.xml", *parts], ["r/1.xml", "r/3.xml"]


_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">' + "".join(
    f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in zip("abcdefgh", "bcdefghi"))
    + ']><eCitation><AbstractText Label="FINDINGS">&i;</AbstractText></eCitation>').encode()
_iu_bad_2("iu_report_billion_laughs", _LAUGHS, ["not valid XML", "amplification"])
_iu_bad_2("iu_report_latin1_undeclared", _report("Caf\xe9.", "latin-1"), ["not valid XML"])
_iu_bad_2("iu_report_zero_byte", b"", ["not valid XML"])
_iu_bad_2("iu_report_oversized", lambda: _report("x" * (2**24 + 1)), ["over MAX_REPORT_BYTES"])


# --- The tests -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(LOADS))
def test_loads_correctly(case, tmp_path):
    LOADS[case](tmp_path)


@pytest.mark.parametrize("case", list(ERRORS))
def test_data_error(case, tmp_path, monkeypatch):
    call, parts = ERRORS[case](tmp_path, monkeypatch)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DataError) as info:
            call()
    finally:
        seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    message = str(info.value)
    assert str(tmp_path) in message
    for part in parts:
        assert part in message, (part, message)
    assert seconds < MAX_SECONDS and peak < MAX_TRACED_BYTES, (seconds, peak)


@pytest.mark.parametrize("case", list(SKIPS))
def test_skipped_under_skip(case, tmp_path, caplog):
    spec, parts, good = SKIPS[case](tmp_path)
    with pytest.raises(DataError) as info:
        _load(spec, on_error="raise")()
    for part in parts:
        assert part in str(info.value), (part, str(info.value))
    data = _load(spec, on_error="skip")()
    assert list(data["name"]) == good
    assert len(data.skipped) == 1 and all(part in data.skipped[0] for part in parts), data.skipped
    assert "skipped 1 of" in caplog.text
