"""The mean shape placed on channel 0: the candidate grid, and the best-Dice choice against a brute-force loop."""

import ml_collections
import numpy as np

from cxr_jax.methods.ld import placement


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def test_candidates_hold_the_mean_shape_and_its_whole_pixel_shifts():
    mean = np.zeros((32, 32), np.float32)
    mean[10:22, 8:20] = 0.8
    maps = placement.candidates(mean, scales=(0.8, 1.0, 1.25), max_shift=4 / 32, shift_steps=4)
    assert maps.shape == (3 * 9 * 9, 32, 32) and maps.dtype == bool
    unscaled = maps[81:162].reshape(9, 9, 32, 32)
    np.testing.assert_array_equal(unscaled[4, 4], mean > 0.5)
    want = np.zeros((32, 32), bool)
    want[13:25, 6:18] = True  # Down 3, left 2.
    np.testing.assert_array_equal(unscaled[4 + 3, 4 - 2], want)
    areas = maps.reshape(3, 81, -1).sum(-1)[:, 40]  # Unshifted, at each scale: larger with the scale.
    assert areas[0] < 144 == areas[1] < areas[2]


def test_place_recovers_a_moved_shape_and_matches_a_brute_force_choice():
    mean = np.zeros((32, 32), np.float32)
    mean[10:22, 8:20] = 1.0
    maps = placement.candidates(mean, scales=(0.9, 1.0, 1.1), max_shift=4 / 32, shift_steps=4)
    moved = np.roll(mean > 0.5, (3, -2), (0, 1))
    np.testing.assert_array_equal(placement.place(maps, moved[None])[0], moved)
    rng = np.random.default_rng(0)
    evidence = rng.random((4, 32, 32)) < 0.3
    evidence[:, 9:23, 7:21] |= rng.random((4, 14, 14)) < 0.9
    want = np.stack([max(maps, key=lambda m, e=e: _dice(m, e)) for e in evidence])
    np.testing.assert_array_equal(placement.place(maps, evidence, chunk=50), want)  # 243 candidates in 5 chunks.


def test_candidates_for_reads_the_grid_from_the_config():
    mean = np.zeros((32, 32), np.float32)
    mean[10:22, 8:20] = 1.0
    shape = ml_collections.ConfigDict(dict(place_scales=(0.9, 1.1), place_max_shift=2 / 32, place_shift_steps=2))
    np.testing.assert_array_equal(placement.candidates_for(mean, shape),
                                  placement.candidates(mean, scales=(0.9, 1.1), max_shift=2 / 32, shift_steps=2))
    assert len(placement.candidates_for(mean, shape)) == 2 * 5 * 5
