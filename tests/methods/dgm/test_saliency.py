"""The residue → saliency pipeline on planted maps with known answers."""

import numpy as np
import pytest

from cxr_jax.methods.dgm import saliency

RNG = np.random.default_rng(0)


def _between_class_variance(values, cut):
    low, high = values[values <= cut], values[values > cut]
    if not len(low) or not len(high):
        return 0.0
    return len(low) * len(high) * (low.mean() - high.mean()) ** 2


def test_otsu_matches_a_brute_force_search_of_every_split():
    values = np.concatenate([RNG.normal(0.2, 0.05, 700), RNG.normal(0.7, 0.1, 300)])
    cut = saliency.otsu_threshold(values)
    best = max(_between_class_variance(values, t) for t in np.unique(values))
    assert _between_class_variance(values, cut) >= 0.999 * best
    assert 0.3 < cut < 0.55
    assert saliency.otsu_threshold(np.full(10, 0.4)) == 0.4


def test_box_mask_takes_the_pixels_whose_centres_are_inside():
    mask = saliency.box_mask([(1.0, 2.0, 4.0, 3.0), (5.4, 0.0, 5.6, 1.0)], (4, 6))
    want = np.zeros((4, 6), bool)
    want[2, 1:4] = True
    want[0, 5] = True  # Centre 5.5 is inside [5.4, 5.6].
    np.testing.assert_array_equal(mask, want)


def test_lung_boxes_are_the_two_largest_regions():
    mask = np.zeros((32, 32), np.uint8)
    mask[4:28, 3:14] = 1  # Image-left lung.
    mask[5:26, 18:30] = 1  # Image-right lung.
    mask[0, 0] = 1  # A speck.
    assert saliency.lung_boxes(mask) == [(3.0, 4.0, 14.0, 28.0), (18.0, 5.0, 30.0, 26.0)]
    assert saliency.lung_boxes(np.zeros((8, 8))) == []


def test_components_outside_the_lungs_or_too_small_are_dropped():
    residue = RNG.uniform(-0.02, 0.02, (32, 32))
    yy, xx = np.mgrid[:32, :32]
    residue[(yy - 10) ** 2 + (xx - 8) ** 2 <= 9] = 0.8  # A nodule in the left box (29 pixels).
    residue[(yy - 20) ** 2 + (xx - 24) ** 2 <= 4] = -0.6  # A dark blob in the right box (13 pixels).
    residue[29:31, 14:17] = 0.9  # Bright, but below both boxes.
    residue[6, 22] = 0.7  # One bright pixel inside the right box.
    boxes = [(3.0, 4.0, 14.0, 28.0), (18.0, 5.0, 30.0, 26.0)]
    out = saliency.saliency(residue, boxes, method="otsu", min_area=3)
    found = out["components"]
    assert [c.area for c in found] == [29, 13]  # Highest score first; the speck and the outsider are gone.
    assert found[0].box == (5.0, 7.0, 12.0, 14.0) and found[0].contains(8.5, 10.5)
    assert found[0].score == pytest.approx(0.8) and found[1].score == pytest.approx(0.6)
    assert found[0].centroid == pytest.approx((8.5, 10.5))
    assert not out["binary"][29:31, 14:17].any() and out["binary"].sum() == 29 + 13
    positive = saliency.saliency(residue, boxes, polarity="positive", min_area=3)["components"]
    assert [c.area for c in positive] == [29]  # The dark blob is removed intensity, not added.


def test_percentile_threshold_and_bad_options():
    scores = np.arange(100, dtype=float).reshape(10, 10)
    region = np.zeros((10, 10), bool)
    region[:5] = True  # Values 0..49 only.
    assert saliency.threshold(scores, region, method="percentile", percentile=90) == pytest.approx(44.1)
    with pytest.raises(ValueError, match="threshold must be one of"):
        saliency.threshold(scores, region, method="mean")
    with pytest.raises(ValueError, match="polarity must be one of"):
        saliency.score_map(scores, "both")
