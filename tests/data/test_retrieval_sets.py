"""Retrieval sets in the CheXpert 8×200 format: written from labelled data, read back, bad input named."""

import csv

import numpy as np
import pytest
from PIL import Image

from cxr_jax.data import phantom, retrieval_sets
from cxr_jax.data.sources import DataError


def _labelled(n=60, seed=0):
    rng = np.random.default_rng(seed)
    findings = np.zeros((n, len(phantom.FINDINGS)), np.int32)
    kind = np.arange(n) % 4  # 0 normal, 1 nodule alone, 2 effusion alone, 3 nodule and effusion.
    findings[kind == 1, 0] = findings[kind == 2, 2] = 1
    findings[kind == 3, 0] = findings[kind == 3, 2] = 1
    images = rng.integers(0, 255, size=(n, 8, 8, 1), dtype=np.uint8)
    return {"image": images, "findings": findings, "label": (kind > 0).astype(np.int32)}, kind


def test_written_set_reads_back_with_exclusive_disjoint_categories(tmp_path):
    data, kind = _labelled()
    counts = retrieval_sets.write_set(data, "phantom", tmp_path, num_queries=3, num_candidates=10, seed=1)
    assert counts == {"No Finding": 10, "nodule": 10, "effusion": 10}  # Mixed cases (kind 3) are left out.
    categories, files = retrieval_sets.read_queries(tmp_path / "image_queries.csv", "Path")
    candidates = retrieval_sets.read_candidates(tmp_path / "candidates.csv", categories)
    assert sorted(categories) == sorted(np.repeat(list(counts), 3))
    assert not set(files) & set(candidates["file"])  # Queries are never candidates.
    member = np.stack([candidates["relevant"][c] for c in counts])
    np.testing.assert_array_equal(member.sum(0), 1)  # Each candidate in exactly one category.
    wanted = {"No Finding": 0, "nodule": 1, "effusion": 2}
    for name, row in zip(counts, member):  # Each written image is one of that category's examples.
        for file in candidates["file"][row]:
            index = int(file.rsplit("/", 1)[1][:-4])
            assert kind[index] == wanted[name]
            np.testing.assert_array_equal(np.asarray(Image.open(file)), data["image"][index, ..., 0])
    texts = retrieval_sets.read_queries(tmp_path / "text_queries.csv", "Text")
    assert list(texts[1]) == ["No finding.", "Nodule.", "Effusion."]


def test_chexpert_values_and_relative_paths(tmp_path):
    (tmp_path / "CheXpert-v1.0-small" / "train").mkdir(parents=True)
    for name in ("a", "b", "c"):
        (tmp_path / "CheXpert-v1.0-small" / "train" / f"{name}.jpg").write_bytes(b"x")
    rows = [["CheXpert-v1.0-small/train/a.jpg", "1.0", ""], ["CheXpert-v1.0-small/train/b.jpg", "-1.0", "1.0"],
            ["CheXpert-v1.0-small/train/c.jpg", "0.0", "1"]]
    _write(tmp_path / "CheXpert-v1.0-small" / "candidates.csv", ["Path", "Edema", "Fracture"], rows)
    got = retrieval_sets.read_candidates(tmp_path / "CheXpert-v1.0-small" / "candidates.csv", ["Edema", "Fracture"])
    assert got["relevant"]["Edema"].tolist() == [True, False, False]
    assert got["relevant"]["Fracture"].tolist() == [False, True, True]
    assert got["file"][0].endswith("CheXpert-v1.0-small/train/a.jpg")


def test_bad_files_are_named(tmp_path):
    _write(tmp_path / "c.csv", ["Path", "Edema"], [["missing.jpg", "1"]])
    with pytest.raises(DataError, match=r"c.csv: row 2: image 'missing.jpg' not found"):
        retrieval_sets.read_candidates(tmp_path / "c.csv", ["Edema"])
    with pytest.raises(DataError, match=r"c.csv: missing required column\(s\) \['Fracture'\]"):
        retrieval_sets.read_candidates(tmp_path / "c.csv", ["Fracture"])
    (tmp_path / "x.jpg").write_bytes(b"x")
    _write(tmp_path / "d.csv", ["Path", "Edema"], [["x.jpg", "yes"]])
    with pytest.raises(DataError, match=r"d.csv: row 2: Edema must be 1, 0, -1 or blank, got 'yes'"):
        retrieval_sets.read_candidates(tmp_path / "d.csv", ["Edema"])
    with pytest.raises(DataError, match="no per-finding labels"):
        retrieval_sets.write_set({"image": np.zeros((2, 4, 4, 1), np.uint8)}, "covid", tmp_path, num_queries=1,
                                 num_candidates=1, seed=0)


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
