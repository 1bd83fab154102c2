"""LD's shape-prior scores: Dice of channel 0, of the prior masks' mean, and of that mean placed on channel 0."""

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax import config as config_lib
from cxr_jax import parallel
from cxr_jax.methods.ld import evaluate as ld_eval
from cxr_jax.methods.ld import placement
from cxr_jax.methods.ld import trainer as ld
from tests.conftest import ROOT


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


class _MaskReader(ld.LD):
    """Channel 0 = the image's bright pixels shifted down by 2 rows: a known, imperfect segmentation."""

    def predict(self, state, batch):
        bright = (batch["image"][..., 0] > 0).astype(jnp.float32)
        return {"assignment": jnp.roll(bright, 2, axis=1)[..., None]}


def test_shape_dice_scores_channel_zero_against_the_masks(tmp_path):
    config = config_lib.load(f"{ROOT / 'configs' / 'ld.py'}:smoke", ["shape.weight=1.0"])
    rng = np.random.default_rng(0)
    masks = np.zeros((5, 32, 32), np.uint8)
    for m in masks:
        y, x = rng.integers(4, 20, size=2)
        m[y:y + 10, x:x + 8] = 1
    data = {"image": (masks[..., None] * 255).astype(np.uint8), "mask_lungs": masks,
            "has_mask": np.array([True, True, False, True, True])}
    prior = masks[:3].astype(np.float32)  # Their mean > 0.5: pixels in at least 2 of the 3.
    result = ld_eval.shape_dice(_MaskReader(config), None, parallel.make_mesh(jax.devices()[:1]), data, tmp_path,
                                prior=prior)
    kept = masks[data["has_mask"]].astype(bool)
    pred = np.roll(kept, 2, axis=1)
    want = np.mean(2 * (pred & kept).sum((1, 2)) / (pred.sum((1, 2)) + kept.sum((1, 2))))
    assert 0.5 < want < 0.95
    np.testing.assert_allclose(result["shape_dice_lungs"], want, rtol=1e-6)
    mean_mask = prior.sum(axis=0) >= 2
    want = np.mean(2 * (mean_mask & kept).sum((1, 2)) / (mean_mask.sum() + kept.sum((1, 2))))
    np.testing.assert_allclose(result["shape_mean_mask_dice_lungs"], want, rtol=1e-6)
    maps = placement.candidates(prior.mean(axis=0), scales=config.shape.place_scales,
                                max_shift=config.shape.place_max_shift, shift_steps=config.shape.place_shift_steps)
    placed = [max(maps, key=lambda m, p=p: _dice(m, p)) for p in pred]  # Fits channel 0, never the truth.
    want = np.mean([_dice(m, k) for m, k in zip(placed, kept)])
    np.testing.assert_allclose(result["shape_placed_dice_lungs"], want, rtol=1e-6)
    assert result["shape_num_images"] == 4 and (tmp_path / "shape.png").exists()
