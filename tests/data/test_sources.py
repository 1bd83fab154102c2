import numpy as np
import pytest
from PIL import Image

from cxr_jax.data import sources
from tests.conftest import data_spec, shared_dir


def _spec(source, path=None, split="train", num_examples=0):
    return data_spec(source, path, split, num_examples=num_examples)


def _write_nih(root, rows, header="image,split,abnormal"):
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = [header] + [",".join(r) for r in rows]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


def _png(path, mode="L", size=(8, 6)):
    Image.new(mode, size, 128).save(path)


def test_nih1000_fixture_loads_and_pads_to_square(tmp_path):
    _write_nih(tmp_path, [("images/a.png", "train", "1"), ("images/b.png", "train", "0"),
                          ("images/c.png", "valid", "0")])
    for name in "abc":
        _png(tmp_path / "images" / f"{name}.png")
    data = sources.load(_spec("nih1000", str(tmp_path)), image_size=16, seed=0)
    assert data["image"].shape == (2, 16, 16, 1) and data["image"].dtype == np.uint8
    np.testing.assert_array_equal(data["label"], [1, 0])
    # 8×6 padded to 8×8 → one zero row top and bottom before the resize.
    assert data["image"][0, 0, 8, 0] < 128 and data["image"][0, 8, 8, 0] == 128


def test_nih1000_finding_labels_become_findings(tmp_path):
    _write_nih(tmp_path, [("images/a.png", "train", "1", "Effusion|Nodule"), ("images/b.png", "train", "0",
                                                                              "No Finding")],
               header="image,split,abnormal,finding_labels")
    for name in "ab":
        _png(tmp_path / "images" / f"{name}.png")
    data = sources.load(_spec("nih1000", str(tmp_path)), image_size=8, seed=0)
    names = sources.public.NIH_FINDINGS
    assert [names[k] for k in np.flatnonzero(data["findings"][0])] == ["Effusion", "Nodule"]
    assert not data["findings"][1].any()
    _write_nih(tmp_path, [("images/a.png", "train", "1", "Flu")], header="image,split,abnormal,finding_labels")
    with pytest.raises(sources.DataError, match=r"metadata.csv: row 2: unknown finding 'Flu'"):
        sources.load(_spec("nih1000", str(tmp_path)), image_size=8, seed=0)


def test_nih1000_patient_split_keeps_each_patient_on_one_side(tmp_path):
    rows = [(f"images/{i}.png", "train" if i % 2 else "valid", str(i % 2), str(i // 3)) for i in range(60)]
    _write_nih(tmp_path, rows, header="image,split,abnormal,patient_id")
    for i in range(60):
        _png(tmp_path / "images" / f"{i}.png")
    sides = {}
    for split in ("train", "valid"):
        names = sources.load(data_spec("nih1000", tmp_path, split, patient_split=True), image_size=8, seed=0)["name"]
        sides[split] = {int(n[7:-4]) // 3 for n in names}  # images/<i>.png → patient i // 3.
        assert len(names) == 3 * len(sides[split])  # Every image of each chosen patient.
        assert sides[split] == {p for p in range(20) if sources.fileio.in_split(str(p), split)}
    assert not sides["train"] & sides["valid"] and len(sides["train"] | sides["valid"]) == 20
    _write_nih(tmp_path, rows[:1], header="image,split,abnormal")
    with pytest.raises(sources.DataError, match="missing required column"):
        sources.load(data_spec("nih1000", tmp_path, "train", patient_split=True), image_size=8, seed=0)


@pytest.mark.parametrize("problem,message", [
    ("missing_column", "missing required column"),
    ("missing_file", "image file is missing"),
    ("corrupt", "cannot decode image"),
    ("truncated", "cannot decode image"),
    ("bad_label", "abnormal must be 0 or 1"),
    ("no_rows", "no rows in split 'train'"),
])
def test_nih1000_bad_input_names_the_file(tmp_path, problem, message):
    header = "image,split" if problem == "missing_column" else "image,split,abnormal"
    label = "2" if problem == "bad_label" else "1"
    split = "valid" if problem == "no_rows" else "train"
    _write_nih(tmp_path, [("images/a.png", split, label)], header=header)
    if problem == "corrupt":
        (tmp_path / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    elif problem == "truncated":
        _png(tmp_path / "images" / "a.png")
        data = (tmp_path / "images" / "a.png").read_bytes()
        (tmp_path / "images" / "a.png").write_bytes(data[:len(data) // 2])
    elif problem != "missing_file":
        _png(tmp_path / "images" / "a.png")
    with pytest.raises(sources.DataError, match=message) as info:
        sources.load(_spec("nih1000", str(tmp_path)), image_size=8, seed=0)
    assert str(tmp_path) in str(info.value)


def test_skip_mode_leaves_bad_examples_out_and_counts_them(tmp_path, caplog):
    rows = [("images/a.png", "train", "1"), ("images/gone.png", "train", "0"), ("images/text.png", "train", "0"),
            ("images/b.png", "train", "2"), ("images/c.png", "train", "0")]
    _write_nih(tmp_path, rows)
    for name in "abc":
        _png(tmp_path / "images" / f"{name}.png")
    (tmp_path / "images" / "text.png").write_text("not an image")
    spec = data_spec("nih1000", tmp_path, "train", on_error="skip")
    data = sources.load(spec, image_size=8, seed=0)
    assert list(data["name"]) == ["images/a.png", "images/c.png"]  # The good rows keep their own labels.
    np.testing.assert_array_equal(data["label"], [1, 0])
    assert len(data.skipped) == 3 and "gone.png: image file is missing" in data.skipped[0]
    assert sources.describe(data)["num_skipped"] == 3
    assert "nih1000 train: skipped 3 of 5 examples" in caplog.text
    _write_nih(tmp_path, rows[1:3])
    with pytest.raises(sources.DataError, match="nih1000 train: all 2 examples are bad"):
        sources.load(spec, image_size=8, seed=0)
    with pytest.raises(sources.DataError, match="on_error must be one of"):
        sources.load(data_spec("nih1000", tmp_path, "train", on_error="ignore"), image_size=8, seed=0)


def test_unknown_source_and_missing_path():
    with pytest.raises(sources.DataError, match="unknown data source 'nope'"):
        sources.load(_spec("nope"), image_size=8, seed=0)
    with pytest.raises(sources.DataError, match="needs data.<split>.path"):
        sources.load(_spec("nih1000"), image_size=8, seed=0)


def test_nih1000_shared_copy():
    root = shared_dir("nih1000")
    data = sources.load(_spec("nih1000", str(root), split="valid"), image_size=64, seed=0)
    assert data["image"].shape[1:] == (64, 64, 1)
    assert 0.3 < data["label"].mean() < 0.7  # The README says balanced.


def test_phantom_splits_differ():
    train = sources.load(_spec("phantom", num_examples=4), image_size=32, seed=0)
    valid = sources.load(_spec("phantom", split="valid", num_examples=4), image_size=32, seed=0)
    assert not np.array_equal(train["image"], valid["image"])
    with pytest.raises(sources.DataError, match="num_examples > 0"):
        sources.load(_spec("phantom"), image_size=32, seed=0)
