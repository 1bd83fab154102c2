"""MIMIC-CXR-JPG loader on a fixture in the real layout (gzipped CSVs, files/pXX/pSUBJECT/sSTUDY/, reports)."""

import gzip
import zipfile

import numpy as np
import pytest
from PIL import Image

from cxr_jax.data import sources
from cxr_jax.data.sources import mimic, public
from tests.conftest import data_spec

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough.

 FINDINGS:

 There is a small left pleural effusion.
 No pneumothorax.

 IMPRESSION:

 Small left effusion.
"""


def _gz_csv(path, header, rows):
    with gzip.open(path, "wt") as f:
        f.write("\n".join([",".join(header), *(",".join(r) for r in rows)]) + "\n")


def _write_mimic(root):
    images = [("d1", "10000032", "50414267", "PA", "train"), ("d2", "10000032", "50414267", "LATERAL", "train"),
              ("d3", "11000011", "51111111", "AP", "train"), ("d4", "12000012", "52222222", "PA", "validate")]
    _gz_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", ["dicom_id", "subject_id", "study_id", "ViewPosition"],
            [i[:4] for i in images])
    _gz_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"],
            [(d, st, su, sp) for d, su, st, _, sp in images])
    labels = {"50414267": {"Pleural Effusion": "1.0", "Pneumothorax": "0.0", "Edema": "-1.0"},
              "52222222": {"No Finding": "1.0"}}  # Study 51111111 has no labeller row.
    _gz_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *public.CHEXPERT_OBSERVATIONS],
            [(su, st, *(labels[st].get(c, "") for c in public.CHEXPERT_OBSERVATIONS))
             for su, st in (("10000032", "50414267"), ("12000012", "52222222"))])
    for d, su, st, _, _ in images:
        folder = root / "files" / f"p{su[:2]}" / f"p{su}" / f"s{st}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 10), 90, np.uint8)).save(folder / f"{d}.jpg")
    (root / "files/p10/p10000032/s50414267.txt").write_text(REPORT)
    with zipfile.ZipFile(root / "mimic-cxr-reports.zip", "w") as z:
        z.writestr("files/p11/p11000011/s51111111.txt", "FINAL REPORT\n\nNo acute cardiopulmonary process.\n")


def test_mimic_fixture(tmp_path):
    _write_mimic(tmp_path)
    data = sources.load(data_spec("mimic", tmp_path, "train", uncertain="ones"), image_size=16, seed=0)
    assert list(data["name"]) == ["d1", "d3"]  # The lateral view is dropped; d4 is in validate.
    assert data["image"].shape == (2, 16, 16, 1)
    observation = public.CHEXPERT_OBSERVATIONS.index
    assert data["findings"][0, observation("Pleural Effusion")] == 1
    assert data["findings"][0, observation("Pneumothorax")] == 0
    assert data["findings"][0, observation("Edema")] == 1  # Uncertain under the 'ones' policy.
    assert (data["findings"][1] == -1).all()  # No labeller row: unknown, not normal.
    np.testing.assert_array_equal(data["label"], [1, -1])
    assert data["report_findings"][0] == "There is a small left pleural effusion. No pneumothorax."
    assert data["text"][0] == ("FINDINGS: There is a small left pleural effusion. No pneumothorax. "
                               "IMPRESSION: Small left effusion.")
    assert data["text"][1] == "IMPRESSION: No acute cardiopulmonary process."  # From the zip; last paragraph.
    valid = sources.load(data_spec("mimic", tmp_path, "valid"), image_size=16, seed=0)
    assert list(valid["name"]) == ["d4"] and valid["label"][0] == 0 and valid["text"][0] == ""


def test_mimic_errors(tmp_path):
    _write_mimic(tmp_path)
    (tmp_path / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    with pytest.raises(sources.DataError, match="missing mimic-cxr-2.0.0-split.csv.gz"):
        sources.load(data_spec("mimic", tmp_path, "train"), image_size=16, seed=0)
    _write_mimic(tmp_path)
    _gz_csv(tmp_path / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "split"], [("d1", "train")])
    (tmp_path / "files/p10/p10000032/s50414267/d1.jpg").unlink()
    with pytest.raises(sources.DataError, match="d1.jpg: image file is missing"):
        sources.load(data_spec("mimic", tmp_path, "train"), image_size=16, seed=0)
    with pytest.raises(sources.DataError, match="mimic split must be one of"):
        sources.load(data_spec("mimic", tmp_path, "dev"), image_size=16, seed=0)


@pytest.mark.parametrize("report,findings,impression", [
    ("FINDINGS: Clear lungs.\nIMPRESSION: Normal.", "Clear lungs.", "Normal."),
    (" FINDINGS AND IMPRESSION:  Stable\n cardiomegaly. \n", "Stable cardiomegaly.", ""),
    ("COMPARISON: None.\n\nCONCLUSION:\nNo pneumothorax.", "", "No pneumothorax."),
    ("Portable view.\n\nLines and tubes in place.", "", "Lines and tubes in place."),
])
def test_report_sections(report, findings, impression):
    assert mimic.report_sections(report) == (findings, impression)
