"""Shared evaluation statistics: the patient-grouped bootstrap of AUCs, the bootstrap of a mean."""

import warnings

import ml_collections
import numpy as np

from cxr_jax import stats
from cxr_jax.stats import auc_interval, grouped_bootstrap_aucs
from tests.conftest import mann_whitney_auc


def test_grouped_bootstrap_matches_resampled_patients():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(15), rng.integers(1, 4, 15))  # 15 patients with 1–3 images each.
    labels = rng.integers(0, 2, len(groups))
    scores = np.round(rng.normal(labels, 1.0, (2, len(groups))), 1)
    aucs = grouped_bootstrap_aucs(labels=labels, scores=scores, groups=[f"p{g:02d}" for g in groups],
                                  num_resamples=20, seed=3)
    # Reference: the same patients drawn (ids in sorted order), their images concatenated, Mann–Whitney on that.
    draws = np.random.default_rng(3).integers(0, 15, (20, 15))
    for b in range(20):
        rows = np.concatenate([np.flatnonzero(groups == g) for g in draws[b]])
        for r in range(2):
            if len(np.unique(labels[rows])) < 2:
                assert np.isnan(aucs[b, r])
            else:
                np.testing.assert_allclose(aucs[b, r], mann_whitney_auc(labels[rows], scores[r, rows]), rtol=1e-12)


def test_copies_of_a_patient_count_as_one_draw():
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 30), rng.normal(size=30)
    one = grouped_bootstrap_aucs(labels=labels, scores=scores, groups=np.arange(30), num_resamples=50, seed=0)
    # Each patient imaged three times, identically: the patient bootstrap must not see 90 independent images.
    three = grouped_bootstrap_aucs(labels=np.repeat(labels, 3), scores=np.repeat(scores, 3),
                                   groups=np.repeat(np.arange(30), 3), num_resamples=50, seed=0)
    np.testing.assert_allclose(three, one, rtol=1e-12)
    by_image = grouped_bootstrap_aucs(labels=np.repeat(labels, 3), scores=np.repeat(scores, 3),
                                      groups=np.arange(90), num_resamples=500, seed=0)
    assert np.nanstd(by_image) < 0.75 * np.nanstd(three)  # Treating copies as independent understates the spread.


def test_auc_interval_brackets_the_auc_and_narrows_with_more_patients():
    cfg = ml_collections.ConfigDict(dict(num_resamples=1000, seed=0))
    rng = np.random.default_rng(0)
    widths = []
    for n in (40, 400):
        labels = np.arange(n) % 2
        scores = labels + rng.normal(0, 1.5, n)
        low, high = auc_interval(labels=labels, scores=scores, groups=np.arange(n), cfg=cfg)
        assert low < mann_whitney_auc(labels, scores) < high
        widths.append(high - low)
    assert 2 < widths[0] / widths[1] < 4.5  # ~√10: the interval shrinks like 1/√n.


def test_auc_interval_is_nan_with_one_class_and_says_nothing():
    cfg = ml_collections.ConfigDict(dict(num_resamples=20, seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's all-NaN percentile warning would fail here.
        low, high = auc_interval(labels=np.ones(6), scores=np.arange(6.0), groups=np.arange(6), cfg=cfg)
    assert np.isnan(low) and np.isnan(high)


def test_mean_interval_matches_the_normal_approximation_of_a_proportion():
    cfg = ml_collections.ConfigDict(dict(num_resamples=4000, seed=0))
    hits = np.zeros(400)
    hits[:120] = 1  # p = 0.3: 95 % interval p ± 1.96 √(p(1 − p)/n) = 0.3 ± 0.0449.
    low, high = stats.mean_interval(hits, cfg=cfg)
    np.testing.assert_allclose([low, high], [0.3 - 0.0449, 0.3 + 0.0449], atol=0.006)
    assert stats.mean_interval(np.full(50, 0.25), cfg=cfg) == (0.25, 0.25)
