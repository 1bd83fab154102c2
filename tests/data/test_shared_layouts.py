"""Loaders of the ../shared/data layouts, on fixtures the tests write and on the shared copies."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from cxr_jax.cli.main import main
from cxr_jax.data import sources
from cxr_jax.data.sources import fileio as data_io
from tests.conftest import data_spec, shared_dir


def _spec(source, path=None, split="all", num_examples=0):
    return data_spec(source, path, split, num_examples=num_examples)


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def test_square_coords_follow_the_pixels(tmp_path):
    # A 6-wide, 10-high mask with one pixel set at (x=4, y=7); padded to 10×10 then resized to 20×20.
    mask = np.zeros((10, 6), np.uint8)
    mask[7, 4] = 255
    _png(tmp_path / "m.png", mask)
    out, size = data_io.read_gray(tmp_path / "m.png", 20, mask=True)
    assert size == (10, 6)
    ys, xs = np.nonzero(out)
    x, y = data_io.square_coords([[4, 7]], size, 20)[0]
    np.testing.assert_allclose([x, y], [xs.mean(), ys.mean()], atol=0.51)
    # The same pixel as a box [4, 5) × [7, 8) in edge coordinates covers the resized pixels.
    x0, y0, x1, y1 = data_io.square_coords([[4, 7], [5, 8]], size, 20, edges=True).reshape(4)
    assert x0 <= xs.min() and xs.max() + 1 <= x1 + 0.5 and y0 <= ys.min() and ys.max() + 1 <= y1 + 0.5


def _write_jsrt(root, with_landmarks=True):
    rows = ["image,nodule,subtlety,size_mm,age,sex,nodule_x,nodule_y,nodule_diameter_px,malignancy,location,"
            "diagnosis,has_landmarks",
            "images/A.png,1,3,10,50,Male,10.0,6.0,4.0,benign,r,x,1",
            "images/B.png,0,,,40,Female,,,,,,,1"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    for name in "AB":
        _png(root / "images" / f"{name}.png", np.full((16, 16), {"A": 100, "B": 120}[name]))
        for s in ("left_lung", "right_lung", "heart", "left_clavicle", "right_clavicle"):
            column = {"left_lung": 10, "right_lung": 2, "heart": 6, "left_clavicle": 12, "right_clavicle": 0}[s]
            m = np.zeros((16, 16))
            m[2:4, column:column + 2] = 255
            _png(root / "masks" / s / f"{name}.png", m)
        if with_landmarks:
            lines = ["structure,index,x,y"] + [f"{s},{i},{i % 16},{1 + i % 7}" for s, n in
                                               (("right_lung", 44), ("left_lung", 50), ("heart", 26))
                                               for i in range(n)]
            (root / "landmarks").mkdir(exist_ok=True)
            (root / "landmarks" / f"{name}.csv").write_text("\n".join(lines) + "\n")


def test_jsrt_fixture(tmp_path):
    _write_jsrt(tmp_path)
    data = sources.load(_spec("jsrt", tmp_path), image_size=32, seed=0)
    np.testing.assert_array_equal(data["label"], [1, 0])
    assert data["landmarks"].shape == (2, 120, 2)
    # Landmark 0 of the right lung is (0, 1) at 16 px → (0.5, 2.5) at 32 px (pixel centres scale by 2).
    np.testing.assert_allclose(data["landmarks"][0, 0], [0.5, 2.5])
    # Centre (10, 6) is pixel (10, 6), whose centre is at edge coordinate 10.5: edges 10.5 ± 2 → × 2.
    np.testing.assert_allclose(data["box"][0], [17, 9, 25, 17])
    assert np.isnan(data["box"][1]).all()
    assert data["mask_lungs"].shape == (2, 32, 32) and data["mask_lungs"].max() == 1
    assert sources.describe(data)["num_with_boxes"] == 1
    # Heart rows 2-3, columns 6-7 at 16 px: mean column 6.5 (its nearest column is 6), mean row there 2.5.
    np.testing.assert_allclose(data["heart_centre"][0], [[13.5, 5.5]])  # Pixel centres: (v + 0.5) × 2 − 0.5.


def test_jsrt_landmark_file_with_a_missing_point_is_an_error(tmp_path):
    _write_jsrt(tmp_path)
    path = tmp_path / "landmarks" / "A.csv"
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(sources.DataError, match="A.csv: heart must have landmarks 0..25"):
        sources.load(_spec("jsrt", tmp_path), image_size=16, seed=0)


def test_jsrt_missing_landmarks_are_nan(tmp_path):
    _write_jsrt(tmp_path, with_landmarks=False)
    data = sources.load(_spec("jsrt", tmp_path), image_size=16, seed=0)
    assert np.isnan(data["landmarks"]).all() and sources.describe(data)["num_with_landmarks"] == 0


def test_covid_fixture_labels_masks_text_and_patient_split(tmp_path):
    rows = ["image,lung_mask,patient_id,finding,view,sex,age,license,clinical_notes"]
    for i, finding in enumerate(["COVID-19", "No Finding", "todo", "Pneumonia"] * 5):
        mask = f"lung_masks/{i}.png" if i % 2 == 0 else ""
        rows.append(f'images/{i}.jpg,{mask},{i // 2},{finding},PA,M,50,cc,"note {i}, with comma"')
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.fromarray(np.full((12, 10), 90, np.uint8)).save(tmp_path / "images" / f"{i}.jpg")
        if mask:
            _png(tmp_path / mask, np.full((12, 10), 255))
    (tmp_path / "metadata.csv").write_text("\n".join(rows) + "\n")
    data = sources.load(_spec("covid", tmp_path), image_size=16, seed=0)
    np.testing.assert_array_equal(data["label"][:4], [1, 0, -1, 1])
    assert data["text"][1] == "note 1, with comma"
    np.testing.assert_array_equal(data["has_mask"][:2], [True, False])
    summary = sources.describe(data)
    assert summary["num_with_masks"] == 10 and summary["label_counts"]["unknown"] == 5
    train = sources.load(_spec("covid", tmp_path, "train"), image_size=16, seed=0)
    valid = sources.load(_spec("covid", tmp_path, "valid"), image_size=16, seed=0)
    assert len(train["name"]) + len(valid["name"]) == 20 and len(valid["name"]) > 0
    patient = {f"images/{i}.jpg": i // 2 for i in range(20)}
    assert not {patient[n] for n in train["name"]} & {patient[n] for n in valid["name"]}
    assert sources.labelled_images(data, "covid")["label"].min() == 0  # Unknown labels dropped.


def test_openist_fixture(tmp_path):
    (tmp_path / "metadata.csv").write_text("image,lung_mask\nimages/a.png,lung_masks/a.png\n")
    _png(tmp_path / "images/a.png", np.full((8, 12), 50))
    _png(tmp_path / "lung_masks/a.png", np.full((8, 12), 255))
    data = sources.load(_spec("openist", tmp_path), image_size=12, seed=0)
    # 8×12 padded to 12×12 with 2 rows above and below: the mask covers rows 2..9 only.
    np.testing.assert_array_equal(data["mask_lungs"][0].any(1), [False] * 2 + [True] * 8 + [False] * 2)
    np.testing.assert_array_equal(data["orig_size"][0], [8, 12])


def test_iu_reports_fixture(tmp_path):
    reports = {
        "ecgen-radiology/1.xml": b'<eCitation><Abstract><AbstractText Label="FINDINGS">Heart size\n normal.'
                                 b'</AbstractText><AbstractText Label="IMPRESSION">No acute disease.</AbstractText>'
                                 b'</Abstract></eCitation>',
        "ecgen-radiology/2.xml": b'<eCitation><Abstract><AbstractText Label="FINDINGS"/></Abstract></eCitation>',
    }
    with tarfile.open(tmp_path / "NLMCXR_reports.tgz", "w:gz") as tar:
        for name, content in reports.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    data = sources.load(_spec("iu_reports", tmp_path), image_size=16, seed=0)
    assert list(data["report_findings"]) == ["Heart size normal."]  # Whitespace normalised; empty report skipped.
    assert data["text"][0] == "FINDINGS: Heart size normal. IMPRESSION: No acute disease."
    assert sources.describe(data)["num_with_text"] == 1 and sources.describe(data)["num_images"] == 0
    with pytest.raises(sources.DataError, match="has no images"):
        sources.labelled_images(data, "iu_reports")


def test_split_must_be_known(tmp_path):
    _write_jsrt(tmp_path)
    with pytest.raises(sources.DataError, match="split must be all, train or valid"):
        sources.load(_spec("jsrt", tmp_path, "test"), image_size=16, seed=0)


@pytest.mark.parametrize("name,expected", [
    ("jsrt", {"num_images": 62, "num_with_landmarks": 62, "num_with_boxes": 39, "num_with_masks": 62}),
    ("openist", {"num_images": 275, "num_with_masks": 275}),
    ("covid", {"num_images": 121, "num_with_text": 121, "num_with_masks": 91}),
])
def test_shared_copies_match_their_readme(name, expected):
    data = sources.load(_spec(name, shared_dir(name)), image_size=32, seed=0)
    summary = sources.describe(data)
    for key, value in expected.items():
        assert summary[key] == value, key
    if name == "jsrt":
        assert summary["label_counts"] == {"normal": 23, "abnormal": 39, "unknown": 0}
        # Right-lung contour points lie on (or next to) the right-lung mask: the image's left half.
        lung = data["landmarks"][:, :44]
        assert np.nanmean(lung[..., 0]) < 16


def test_shared_iu_reports():
    data = sources.load(_spec("iu_reports", shared_dir("iu_reports")), image_size=32, seed=0)
    assert 3500 < len(data["text"]) <= 3955
    assert all(t.strip() for t in data["text"])


def test_data_cli(tmp_path, capsys):
    _write_jsrt(tmp_path)
    assert main(["data", "list"]) == 0
    assert "jsrt" in capsys.readouterr().out
    assert main(["data", "inspect", "jsrt", "--path", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {"num_images", "image_size_range", "label_counts", "num_with_masks",
                            "num_with_landmarks", "num_with_boxes", "num_with_text", "num_skipped"}
    assert summary["num_images"] == 2 and summary["image_size_range"] == {"min_hw": [16, 16], "max_hw": [16, 16]}


def test_data_show_writes_a_contact_sheet(tmp_path, capsys):
    _write_jsrt(tmp_path / "jsrt")
    out = tmp_path / "sheet.png"
    assert main(["data", "show", "jsrt", "--path", str(tmp_path / "jsrt"), "--out", str(out), "--num", "2",
                 "--image-size", "32"]) == 0
    assert "2 of 2 images" in capsys.readouterr().out
    image = np.asarray(Image.open(out).convert("L"))
    assert image.shape[0] > 100 and image.std() > 5  # A real picture, not a blank canvas.
    out2 = tmp_path / "phantom.png"
    assert main(["data", "show", "phantom", "--split", "train", "--out", str(out2), "--num", "3",
                 "--image-size", "64"]) == 0
    assert out2.stat().st_size > 10_000
