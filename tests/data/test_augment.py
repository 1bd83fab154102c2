"""Augmentation ops against closed forms, seeded determinism, and each method's view inside tf.data."""

import math

import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from cxr_jax import config as config_lib
from cxr_jax.data import augment

SEED = tf.constant([3, 7], tf.int64)


def _paper_augment(method):
    """The paper's augmentation ranges, as configs/<method>.py holds them."""
    return config_lib.method_config(method, "paper").augment


def _ramp(h=9, w=9, c=1):
    return tf.reshape(tf.range(h * w * c, dtype=tf.float32), [h, w, c]) / (h * w * c)


def test_augmentations_are_seeded_and_the_same_inside_tf_data():
    image = tf.reshape(tf.range(64, dtype=tf.float32), [8, 8, 1])
    seed = tf.constant([1, 2], tf.int64)

    def aug(img, s):
        a, b = tf.unstack(augment.split_seed(s, 2))
        return augment.random_contrast(augment.random_shift(img, a, 2), b, 0.3)

    eager = aug(image, seed).numpy()
    np.testing.assert_array_equal(eager, aug(image, seed).numpy())
    graph = next(iter(tf.data.Dataset.from_tensors((image, seed)).map(aug))).numpy()
    np.testing.assert_allclose(eager, graph, rtol=1e-6)
    assert not np.array_equal(eager, aug(image, tf.constant([1, 3], tf.int64)).numpy())


def test_random_shift_translates_and_keeps_content():
    image = tf.reshape(tf.range(1, 26, dtype=tf.float32), [5, 5, 1])
    for s in range(10):
        out = augment.random_shift(image, tf.constant([s, 0], tf.int64), 1).numpy()[..., 0]
        # Some integer offset (dy, dx) in [-1, 1]² maps the input onto the output where both are defined.
        matches = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                   if np.array_equal(out[max(dy, 0):5 + min(dy, 0), max(dx, 0):5 + min(dx, 0)],
                                     image.numpy()[max(-dy, 0):5 + min(-dy, 0), max(-dx, 0):5 + min(-dx, 0), 0])]
        assert matches


def test_random_contrast_keeps_the_mean():
    image = tf.random.stateless_uniform([6, 6, 1], [0, 1])
    out = augment.random_contrast(image, tf.constant([4, 4], tf.int64), 0.5)
    np.testing.assert_allclose(out.numpy().mean(), image.numpy().mean(), rtol=1e-5)
    assert not np.allclose(out.numpy(), image.numpy())


def test_to_float_range():
    out = augment.to_float(tf.constant([0, 255], tf.uint8)).numpy()
    np.testing.assert_allclose(out, [-1.0, 1.0])


def test_affine_rotation_translation_and_scale_closed_forms():
    image = _ramp()
    rotated = augment.affine(image, angle=90.0, translate=(0.0, 0.0), scale=1.0)
    np.testing.assert_allclose(rotated, tf.image.rot90(image, 1), atol=1e-5)  # Counter-clockwise as shown.
    shifted = augment.affine(image, angle=0.0, translate=(2.0, -1.0), scale=1.0, fill=-1.0).numpy()[..., 0]
    np.testing.assert_allclose(shifted[:8, 2:], image.numpy()[1:, :7, 0], atol=1e-6)  # Right 2, up 1.
    assert (shifted[:, :2] == -1).all() and (shifted[8] == -1).all()
    zoomed = augment.affine(image, angle=0.0, translate=(0.0, 0.0), scale=2.0).numpy()[..., 0]
    # Scale 2 about the centre (4, 4): output (x, y) samples input (4 + (x - 4) / 2, 4 + (y - 4) / 2).
    x = 4 + (np.arange(9) - 4) / 2
    expected = scipy.ndimage.map_coordinates(image.numpy()[..., 0], np.meshgrid(x, x, indexing="ij"), order=1)
    np.testing.assert_allclose(zoomed, expected, atol=1e-5)


def test_random_affine_draws_within_its_ranges():
    image = tf.ones([16, 16, 1])
    for s in range(20):
        out = augment.random_affine(image, tf.constant([s, 1], tf.int64), degrees=20.0, translate=0.1,
                                    scale=(0.95, 1.05)).numpy()
        # The centre pixel stays inside a ±20°, ±1.6 px, ≥0.95× transform of a full image.
        assert out[6:10, 6:10].min() > 0.99


def _torchvision_crop_areas(n, shape, area, aspect, rng):
    """Areas of torchvision's RandomResizedCrop.get_params, re-implemented in NumPy float64."""
    out = []
    for _ in range(n):
        for _ in range(10):
            target = rng.uniform(*area) * shape[0] * shape[1]
            ratio = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
            w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < w <= shape[1] and 0 < h <= shape[0]:
                out.append(w * h / (shape[0] * shape[1]))
                break
        else:
            out.append(1.0)
    return np.array(out)


def test_crop_box_follows_torchvision():
    areas, aspects = [], []
    for s in range(400):
        y0, x0, h, w = augment.crop_box(tf.constant([100, 120, 1]), tf.constant([s, 2], tf.int64),
                                        area=(0.6, 1.0), aspect=(3 / 4, 4 / 3)).numpy()
        assert 0 <= y0 and y0 + h <= 100 and 0 <= x0 and x0 + w <= 120
        areas.append(h * w / 12000)
        aspects.append(w / h)
    reference = _torchvision_crop_areas(4000, (100, 120), (0.6, 1.0), (3 / 4, 4 / 3), np.random.default_rng(0))
    assert min(areas) >= 0.59 and max(areas) <= 1.0
    assert np.mean(areas) == pytest.approx(reference.mean(), abs=0.02)  # 400 draws: s.e. ≈ 0.006.
    assert min(aspects) >= 3 / 4 - 0.03 and max(aspects) <= 4 / 3 + 0.03  # Integer sides round the ratio.
    y0, x0, h, w = augment.crop_box(tf.constant([10, 100, 1]), SEED, area=(0.9, 1.0), aspect=(1.0, 1.0)).numpy()
    assert (y0, x0, h, w) == (0, 45, 10, 10)  # Nothing fits at ≥ 90 % area and ratio 1: centred fallback.


def test_random_resized_crop_is_a_resized_window():
    image = _ramp(20, 20)
    out = augment.random_resized_crop(image, SEED, size=10, area=(0.6, 1.0))
    y0, x0, h, w = augment.crop_box(tf.shape(image), SEED, area=(0.6, 1.0), aspect=(3 / 4, 4 / 3)).numpy()
    np.testing.assert_allclose(out, tf.image.resize(image[y0:y0 + h, x0:x0 + w], [10, 10]), atol=1e-6)
    assert out.shape == (10, 10, 1)


def test_brightness_contrast_match_torchvision_formulas():
    image = _ramp(4, 4)
    out = augment.brightness_contrast(image, brightness=1.3, contrast=0.7).numpy()
    bright = np.clip(image.numpy().astype(np.float64) * 1.3, 0, 1)
    expected = np.clip((bright - bright.mean()) * 0.7 + bright.mean(), 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    drawn = augment.random_brightness_contrast(image, SEED, brightness=(0.6, 1.4), contrast=(0.6, 1.4)).numpy()
    assert drawn.min() >= 0 and drawn.max() <= 1 and not np.allclose(drawn, image)


@pytest.mark.parametrize("sigma", [0.1, 1.0, 3.0])
def test_gaussian_blur_matches_scipy(sigma):
    image = tf.random.stateless_uniform([24, 20, 2], [1, 1])
    radius = math.ceil(3 * 3.0)
    out = augment.gaussian_blur(image, sigma=sigma, radius=radius).numpy()
    expected = scipy.ndimage.gaussian_filter(image.numpy().astype(np.float64), sigma=(sigma, sigma, 0),
                                             mode="mirror", radius=(radius, radius, 0))
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_flip_and_rot_flip_inverse_recovers_a_planted_pattern():
    image = tf.zeros([8, 8, 3]).numpy()
    image[1, 6] = [1, 2, 3]  # One marked cell.
    image = tf.constant(image)
    for k in range(4):
        for flip in (False, True):
            moved = augment.rot_flip(image, k=k, flip=flip)
            np.testing.assert_array_equal(augment.undo_rot_flip(moved, k=k, flip=flip), image)
            assert (moved.numpy() != 0).sum() == 3
    np.testing.assert_array_equal(augment.rot_flip(image, k=0, flip=True).numpy()[6, 1], [1, 2, 3])
    flips = {bool(np.array_equal(augment.random_flip(image, tf.constant([s, 0], tf.int64), axis=1),
                                 image[:, ::-1])) for s in range(10)}
    assert flips == {True, False}


@pytest.mark.parametrize("method", ["convirt", "ld"])
def test_method_views_are_deterministic_and_the_same_inside_tf_data(method):
    cfg = _paper_augment(method)
    image = augment.to_unit(tf.cast(_ramp(40, 48) * 255, tf.uint8))

    def view(img, s):
        if method == "convirt":
            return augment.convirt_view(img, s, cfg)
        return augment.ld_jitter(augment.ld_base(img, s, cfg), s[::-1], cfg)

    eager = view(image, SEED).numpy()
    assert eager.shape == (40, 40, 1) and eager.min() >= 0 and eager.max() <= 1  # Square at the height.
    graph = next(iter(tf.data.Dataset.from_tensors((image, SEED)).map(view))).numpy()
    np.testing.assert_allclose(eager, graph, atol=1e-5)
    assert not np.allclose(eager, view(image, tf.constant([3, 8], tf.int64)).numpy())


def test_ld_shape_masks_draw_from_the_set_and_stay_binary_masks_of_their_area():
    yy, xx = np.mgrid[:40, :40]
    disc = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 8**2).astype(np.float32)
    square = np.zeros((40, 40), np.float32)
    square[16:24, 14:26] = 1.0  # 96 px against the disc's 197.
    masks = tf.constant(np.stack([disc, square])[..., None])
    cfg = _paper_augment("ld")
    picked = []
    for s in range(8):
        out = augment.ld_shape_masks(masks, tf.constant([s, 1], tf.int64), cfg, num=2).numpy()
        assert out.shape == (2, 40, 40, 1) and set(np.unique(out)) <= {0.0, 1.0}
        for area in out.sum(axis=(1, 2, 3)):
            ratios = area / np.array([disc.sum(), square.sum()])  # A crop of 90–100 % area zooms by ≤ 1/0.9.
            assert np.any((ratios > 0.85) & (ratios < 1.25)), ratios
            picked.append(int(np.argmin(np.abs(np.log(ratios)))))
    assert set(picked) == {0, 1}


def test_ld_base_flips_only_where_asked():
    image = tf.constant(np.random.default_rng(0).uniform(size=(16, 16, 1)), tf.float32)
    cfg = _paper_augment("ld")
    cfg.update(dict(base_degrees=0.0, crop_area=(1.0, 1.0)))
    seeds = [tf.constant([s, 2], tf.int64) for s in range(12)]

    def seen(flip_lr, flip_ud):
        cfg.update(dict(flip_lr=flip_lr, flip_ud=flip_ud))
        out = [augment.ld_base(image, s, cfg).numpy() for s in seeds]
        kinds = {"id": image.numpy(), "lr": image.numpy()[:, ::-1], "ud": image.numpy()[::-1],
                 "both": image.numpy()[::-1, ::-1]}
        return {next(k for k, v in kinds.items() if np.allclose(o, v, atol=1e-6)) for o in out}

    assert seen(0.5, 0.5) == {"id", "lr", "ud", "both"}  # The official: either flip.
    assert seen(0.5, 0.0) == {"id", "lr"}  # Upright: the lungs stay above the diaphragm.
    assert seen(0.0, 1.0) == {"ud"}


def test_convirt_blur_is_scaled_from_the_papers_224_pixels():
    cfg = _paper_augment("convirt")
    cfg.update(dict(crop_area=(1.0, 1.0), flip=0.0, degrees=0.0, translate=0.0, scale=(1.0, 1.0),
                    brightness=(1.0, 1.0), contrast=(1.0, 1.0), blur_sigma=(4.0, 4.0)))
    image = tf.constant(np.random.default_rng(0).uniform(size=(56, 56, 1)), tf.float32)
    out = augment.convirt_view(image, SEED, cfg).numpy()
    # 56 px is a quarter of 224: σ 4 becomes 1.
    np.testing.assert_allclose(out, augment.gaussian_blur(image, sigma=1.0, radius=3).numpy(), atol=1e-5)


def test_shifts_with_one_seed_move_together_and_fill_as_asked():
    image = tf.reshape(tf.range(1, 26, dtype=tf.float32), [5, 5, 1])
    seed = tf.constant([4, 1], tf.int64)
    a = augment.random_shift(image, seed, 2).numpy()
    b = augment.random_shift(-image, seed, 2, fill=0.0).numpy()
    np.testing.assert_array_equal(np.where(b == 0, 1.0, -b), np.where(b == 0, 1.0, a))  # Same offset…
    assert (a[b == 0] == 1.0).all()  # …the first filled with its minimum, the second with 0.


def test_transplant_residue_adds_and_clips():
    image = tf.constant([[[-1.0], [0.0]], [[0.5], [0.9]]])
    residue = tf.constant([[[0.2], [0.3]], [[-0.2], [0.4]]])
    out = augment.transplant_residue(image, residue, weight=0.5).numpy()[..., 0]
    np.testing.assert_allclose(out, [[-0.9, 0.15], [0.4, 1.0]], rtol=1e-6)
