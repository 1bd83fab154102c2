"""DICOM decoding (modality LUT, window, VOI LUT, MONOCHROME1, JPEG) and the RSNA Pneumonia layout."""

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

from cxr_jax.data import sources
from cxr_jax.data.sources import read_gray
from tests.conftest import data_spec


def write_dicom(path, pixels, *, photometric="MONOCHROME2", window=None, lut=None, rescale=None, jpeg=False):
    """A minimal single-frame DICOM as a scanner writes it; `pixels` uint8 or uint16 [H, W]."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CR", path.stem
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(lut["data"]), lut["first"], lut["bits"]]
        item.add_new(0x00283006, "US", [int(v) for v in lut["data"]])  # LUT Data.
        ds.VOILUTSequence = [item]
    if jpeg:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.PhotometricInterpretation = "MONOCHROME2"
    else:
        ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _window_reference(x, center, width):
    """DICOM PS3.3 C.11.2.1.2.1 linear window, as a 0–1 display value, in float64."""
    x = np.asarray(x, np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


RAMP = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096)


def test_dicom_window_and_rescale_match_the_standard(tmp_path):
    write_dicom(tmp_path / "w.dcm", RAMP, window=(1000, 801), rescale=(2.0, -100.0))
    image, size = read_gray(tmp_path / "w.dcm", 64)
    expected = np.round(_window_reference(2.0 * RAMP - 100.0, 1000, 801) * 255)
    assert size == (64, 64)
    np.testing.assert_allclose(image, expected, atol=1)  # Rounding of a float64 reference.


def test_dicom_monochrome1_is_inverted_and_no_voi_uses_min_max(tmp_path):
    write_dicom(tmp_path / "m2.dcm", RAMP)
    write_dicom(tmp_path / "m1.dcm", RAMP, photometric="MONOCHROME1")
    m2, m1 = read_gray(tmp_path / "m2.dcm", 64)[0], read_gray(tmp_path / "m1.dcm", 64)[0]
    np.testing.assert_array_equal(m2, np.round(RAMP / RAMP.max() * 255))
    np.testing.assert_array_equal(m1.astype(int), 255 - m2.astype(int))


def test_dicom_voi_lut_sequence(tmp_path):
    lut = np.round(np.sqrt(np.arange(2048) / 2047) * 4095).astype(int)  # A 12-bit gamma-like LUT from 1024 on.
    write_dicom(tmp_path / "l.dcm", RAMP, lut={"data": lut, "first": 1024, "bits": 12})
    image = read_gray(tmp_path / "l.dcm", 64)[0]
    expected = np.round(lut[np.clip(RAMP.astype(int) - 1024, 0, 2047)] / 4095 * 255)
    np.testing.assert_array_equal(image, expected)


def test_dicom_jpeg_baseline_and_bad_files(tmp_path):
    pixels = (np.add.outer(np.arange(32), np.arange(32)) * 4).astype(np.uint8)
    write_dicom(tmp_path / "j.dcm", pixels, jpeg=True)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    # 8-bit without a VOI transform: shown as stored, i.e. exactly what a JPEG decoder gives.
    np.testing.assert_array_equal(read_gray(tmp_path / "j.dcm", 32)[0], np.asarray(Image.open(buffer)))
    rgb = tmp_path / "rgb.dcm"
    write_dicom(rgb, pixels)
    ds = pydicom.dcmread(rgb)
    ds.PhotometricInterpretation = "RGB"
    ds.save_as(rgb)
    with pytest.raises(sources.DataError, match="rgb.dcm: expected a single-frame grayscale DICOM"):
        read_gray(rgb, 32)
    (tmp_path / "bad.dcm").write_bytes(b"DICM" * 10)
    with pytest.raises(sources.DataError, match="bad.dcm: cannot decode DICOM"):
        read_gray(tmp_path / "bad.dcm", 32)


def _write_rsna(root):
    patients = {"p-normal": [], "p-opacity": [(8, 16, 20, 10), (60, 2, 4, 4)], "p-other": [], "p-noclass": []}
    lines = ["patientId,x,y,width,height,Target"]
    for p, boxes in patients.items():
        lines += [f"{p},{x},{y},{w},{h},1" for x, y, w, h in boxes] or [f"{p},,,,,0"]
    (root / "stage_2_train_labels.csv").parent.mkdir(parents=True, exist_ok=True)
    (root / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")
    (root / "stage_2_detailed_class_info.csv").write_text(
        "patientId,class\np-normal,Normal\np-opacity,Lung Opacity\np-opacity,Lung Opacity\n"
        "p-other,No Lung Opacity / Not Normal\n")
    for p in patients:
        write_dicom(root / "stage_2_train_images" / f"{p}.dcm", RAMP)
    write_dicom(root / "stage_2_test_images" / "t1.dcm", RAMP)


def test_rsna_fixture(tmp_path):
    _write_rsna(tmp_path)
    data = sources.load(data_spec("rsna", tmp_path, "all"), image_size=32, seed=0)
    assert list(data["name"]) == ["p-normal", "p-opacity", "p-other", "p-noclass"]
    np.testing.assert_array_equal(data["label"], [0, 1, 1, -1])  # Not Normal is abnormal; no class: unknown.
    np.testing.assert_array_equal(data["findings"][:, 0], [0, 1, 0, 0])
    # 64 px → 32 px: (x, y, w, h) = (8, 16, 20, 10) → edges (4, 8, 14, 13).
    np.testing.assert_allclose(data["boxes"][1], [[4, 8, 14, 13], [30, 1, 32, 3]])
    np.testing.assert_allclose(data["box"][1], [4, 1, 32, 13])
    assert np.isnan(data["box"][0]).all()
    described = sources.describe(data)
    assert described["num_with_boxes"] == 1 and described["label_counts"] == {"normal": 1, "abnormal": 2,
                                                                              "unknown": 1}
    test = sources.load(data_spec("rsna", tmp_path, "test"), image_size=32, seed=0)
    assert list(test["name"]) == ["t1"] and test["label"][0] == -1
    train, valid = (sources.load(data_spec("rsna", tmp_path, s), image_size=32, seed=0)["name"]
                    for s in ("train", "valid"))
    assert sorted([*train, *valid]) == sorted(data["name"])


def test_rsna_errors(tmp_path):
    _write_rsna(tmp_path)
    text = (tmp_path / "stage_2_train_labels.csv").read_text().replace(",0\n", ",2\n", 1)
    (tmp_path / "stage_2_train_labels.csv").write_text(text)
    with pytest.raises(sources.DataError, match=r"stage_2_train_labels.csv: row 2: Target must be 0 or 1"):
        sources.load(data_spec("rsna", tmp_path, "all"), image_size=32, seed=0)
    _write_rsna(tmp_path)
    (tmp_path / "stage_2_train_images/p-other.dcm").unlink()
    with pytest.raises(sources.DataError, match="p-other.dcm: image file is missing"):
        sources.load(data_spec("rsna", tmp_path, "all"), image_size=32, seed=0)
    skipped = sources.load(data_spec("rsna", tmp_path, "all", on_error="skip"), image_size=32, seed=0)
    assert list(skipped["name"]) == ["p-normal", "p-opacity", "p-noclass"] and len(skipped.skipped) == 1
