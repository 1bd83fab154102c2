"""experiments/ld_shape_prior.py: the cluster union, the other-image Dice and the oracle placement."""

import importlib.util
import pathlib

import ml_collections
import numpy as np
import pytest

PATH = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "ld_shape_prior.py"
_spec = importlib.util.spec_from_file_location("ld_shape_prior", PATH)
shape_prior = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shape_prior)


def _disc(centre=(32, 32), radius=12.0, size=64):
    yy, xx = np.mgrid[:size, :size]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_greedy_union_finds_the_clusters_that_make_the_mask():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (6, 16, 16))
    chosen, score = shape_prior.greedy_union(labels, np.isin(labels, [1, 3]), 5)
    assert sorted(chosen) == [1, 3] and score == pytest.approx(1.0)


def test_oracle_placement_recovers_a_shifted_and_scaled_shape():
    prob = _disc().astype(np.float32)
    shifted = np.roll(_disc(), (4, -6), (0, 1))
    bigger = _disc(radius=13.2)  # 1.1 × the radius.
    best = shape_prior.oracle_placed(shape_prior.placements(prob), np.stack([shifted, bigger]))
    assert best[0] == pytest.approx(1.0) and best[1] > 0.97
    unplaced = shape_prior.dice(np.broadcast_to(prob > 0.5, (1, 64, 64)), shifted[None])[0]
    assert unplaced < 0.8


def test_cross_dice_scores_only_other_images():
    a, b = _disc((20, 20), 8), _disc((44, 44), 8)
    assert shape_prior.cross_dice(np.stack([a, a]), np.stack([a, a])) == pytest.approx([1.0, 1.0])
    assert shape_prior.cross_dice(np.stack([a, b]), np.stack([a, b])) == pytest.approx([0.0, 0.0])


def test_interval_brackets_the_mean():
    cfg = ml_collections.ConfigDict(dict(num_resamples=2000, seed=0))
    mean, low, high = shape_prior.interval(np.array([0.2, 0.4, 0.6, 0.8]), cfg=cfg)
    assert mean == pytest.approx(0.5) and low < mean < high
    assert shape_prior.interval(np.full(5, 0.7), cfg=cfg) == [0.7, 0.7, 0.7]


def test_placement_on_evidence_uses_only_the_evidence():
    prob = _disc().astype(np.float32)
    truth = np.roll(_disc(), (4, -6), (0, 1))[None]
    maps = shape_prior.placements(prob)
    assert shape_prior.placed_on(maps, truth, truth)[0] == pytest.approx(1.0)
    wrong = np.roll(_disc(), (-6, 6), (0, 1))[None]  # Evidence elsewhere: the shape goes there, not to the truth.
    assert shape_prior.placed_on(maps, wrong, truth)[0] < 0.5
