"""experiments/ld_shape_prior.py: the cluster union, the other-image Dice and the placements of one set."""

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


def test_cross_dice_scores_only_other_images():
    a, b = _disc((20, 20), 8), _disc((44, 44), 8)
    assert shape_prior.cross_dice(np.stack([a, a]), np.stack([a, a])) == pytest.approx([1.0, 1.0])
    assert shape_prior.cross_dice(np.stack([a, b]), np.stack([a, b])) == pytest.approx([0.0, 0.0])


def test_interval_brackets_the_mean():
    cfg = ml_collections.ConfigDict(dict(num_resamples=2000, seed=0))
    mean, low, high = shape_prior.interval(np.array([0.2, 0.4, 0.6, 0.8]), cfg=cfg)
    assert mean == pytest.approx(0.5) and low < mean < high
    assert shape_prior.interval(np.full(5, 0.7), cfg=cfg) == [0.7, 0.7, 0.7]


def test_set_report_places_the_mean_shape_on_channel_zero_only():
    truth = np.stack([np.roll(_disc(), (4, -6), (0, 1)), np.roll(_disc(), (-4, 2), (0, 1))])
    channels = np.zeros((2, 64, 64, 3), np.float32)
    channels[..., 0] = truth
    channels[1, ..., 0] = np.roll(truth[1], (-2, 4), (0, 1))  # Evidence off the truth: the shape follows it.
    config = ml_collections.ConfigDict(dict(
        shape=dict(place_scales=(0.9, 1.0, 1.1), place_max_shift=0.2, place_shift_steps=6),
        bootstrap=dict(num_resamples=200, seed=0)))
    report = shape_prior.set_report(channels, truth, prior_mean=_disc().astype(np.float32),
                                    train_mean=_disc().astype(np.float32), chosen=[0], config=config)
    placed = shape_prior.dice(np.roll(_disc(), (-6, 6), (0, 1))[None], truth[1:])[0]
    assert report["mean_placed_on_channel0"][0] == pytest.approx((1.0 + placed) / 2, abs=1e-3)
    assert report["oracle_placed_mean"][0] == pytest.approx(1.0)
    assert report["mean_of_prior_masks"][0] < 0.8 and report["num_images"] == 2
