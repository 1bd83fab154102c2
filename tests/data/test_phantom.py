"""The phantom's ground truth is consistent with its pixels and its reports."""

import re

import numpy as np
import pytest
from scipy import ndimage

from cxr_jax.data import phantom

N = 60


@pytest.fixture(scope="module")
def data():
    return phantom.generate(N, image_size=128, seed=7)


def test_deterministic_and_each_image_depends_only_on_its_index(data):
    again = phantom.generate(5, image_size=128, seed=7)
    for key in ("image", "mask_lesion", "landmarks"):
        np.testing.assert_array_equal(again[key], data[key][:5])
    assert list(again["text"]) == list(data["text"][:5])
    assert not np.array_equal(phantom.generate(5, image_size=128, seed=8)["image"], again["image"])


def test_every_finding_type_occurs_and_labels_match_findings(data):
    big = phantom.generate(200, image_size=64, seed=1)
    assert (big["findings"].sum(0) > 10).all()
    np.testing.assert_array_equal(big["label"], big["findings"].any(1))
    assert 0.35 < big["label"].mean() < 0.65


def test_lesion_masks_exist_exactly_for_abnormal_images_and_sit_in_lungs_or_heart(data):
    lesion = data["mask_lesion"].astype(bool)
    np.testing.assert_array_equal(lesion.reshape(N, -1).any(1), data["label"] == 1)
    organs = data["mask_lungs"].astype(bool) | data["mask_heart"].astype(bool)
    assert not (lesion & ~organs).any()
    assert not (data["mask_lungs"].astype(bool) & data["mask_heart"].astype(bool)).any()
    for i in np.nonzero(data["label"])[0]:
        ys, xs = np.nonzero(lesion[i])
        np.testing.assert_array_equal(data["box"][i], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    assert np.isnan(data["box"][data["label"] == 0]).all()


def test_anatomy_sits_in_the_body_with_plausible_densities(data):
    image = data["image"][..., 0].astype(float)
    background = np.concatenate([image[:, :6, :6].reshape(N, -1), image[:, -6:, -6:].reshape(N, -1)], 1).mean(1)
    normal = data["label"] == 0
    for key in ("mask_lungs", "mask_heart", "mask_clavicles"):
        m = data[key].astype(bool)
        assert m.reshape(N, -1).any(1).all(), key
        assert not m[:, :3].any() and not m[:, -3:].any() and not m[:, :, :3].any() and not m[:, :, -3:].any()
        means = np.array([image[i][m[i]].mean() for i in range(N)])
        assert (means > background + 10).all(), key
    lungs = np.array([image[i][data["mask_lungs"][i] > 0].mean() for i in np.nonzero(normal)[0]])
    heart = np.array([image[i][data["mask_heart"][i] > 0].mean() for i in np.nonzero(normal)[0]])
    assert (heart > lungs + 40).all()  # Soft tissue is denser (brighter) than aerated lung.
    # Two lung fields, one on each side of the midline.
    for i in range(N):
        labels, count = ndimage.label(data["mask_lungs"][i])
        assert count == 2


STRUCTURE_OF = {"lung": "mask_lungs", "costophrenic": "mask_lungs", "dome": "mask_lungs", "heart": "mask_heart",
                "clavicle": "mask_clavicles"}


def test_landmarks_lie_on_their_structures(data):
    assert data["landmarks"].shape == (N, len(phantom.LANDMARKS), 2)
    for k, name in enumerate(phantom.LANDMARKS):
        key = next((v for s, v in STRUCTURE_OF.items() if s in name), None)
        if key is None:  # The carina: on the midline, between the apices.
            assert (np.abs(data["landmarks"][:, k, 0] - data["landmarks"][:, :2, 0].mean(1)) < 6).all()
            continue
        for i in range(N):
            dist = ndimage.distance_transform_edt(data[key][i] == 0)
            x, y = np.round(data["landmarks"][i, k]).astype(int)
            assert dist[y, x] <= 2.0, (name, i, dist[y, x])
    # Same index, same point: the right apex is always on the image's left of the left apex.
    assert (data["landmarks"][:, 0, 0] < data["landmarks"][:, 1, 0]).all()


KEYWORDS = {"nodule": r"nodul", "consolidation": r"consolidation", "effusion": r"effusion",
            "cardiomegaly": r"cardiomegaly|enlarged", "pneumothorax": r"pneumothorax"}


def _positive_sentences(text):
    findings = text.split("IMPRESSION:")[0].removeprefix("FINDINGS:")
    return [s for s in re.split(r"(?<=\.)\s+", findings.strip()) if s and not re.match(r"No\b", s)
            and " no " not in s.lower()]


def test_reports_name_exactly_the_findings_present_and_where(data):
    for i in range(N):
        text = data["text"][i]
        assert text.startswith("FINDINGS: ") and " IMPRESSION: " in text
        sentences = _positive_sentences(text)
        for f, present in zip(phantom.FINDINGS, data["findings"][i]):
            named = [s for s in sentences if re.search(KEYWORDS[f], s, re.I)]
            assert bool(named) == bool(present), (f, text)
            if present and f != "cardiomegaly":
                # Patient's right is the image's left: the side named matches where the lesion is.
                side = "right" if re.search(r"\bright\b", named[0], re.I) else "left"
                assert re.search(rf"\b{side}\b", named[0], re.I)
        if not data["label"][i]:
            assert not any(re.search("|".join(KEYWORDS.values()), s, re.I) for s in sentences)


def test_single_finding_side_matches_mask_position():
    rng_data = phantom.generate(80, image_size=64, seed=3)
    checked = 0
    for i in range(80):
        f = rng_data["findings"][i]
        if f.sum() != 1 or f[phantom.FINDINGS.index("cardiomegaly")]:
            continue
        xs = np.nonzero(rng_data["mask_lesion"][i])[1]
        side = "right" if xs.mean() < 32 else "left"
        assert re.search(rf"\b{side}\b", rng_data["text"][i].split("IMPRESSION:")[0], re.I), rng_data["text"][i]
        checked += 1
    assert checked > 12


def test_reports_vary():
    texts = phantom.generate(40, image_size=32, seed=2)["text"]
    assert len(set(texts)) > 20


@pytest.mark.parametrize("size", [64, 256])
def test_sizes(size):
    d = phantom.generate(2, image_size=size, seed=0)
    assert d["image"].shape == (2, size, size, 1) and d["mask_lungs"].shape == (2, size, size)
