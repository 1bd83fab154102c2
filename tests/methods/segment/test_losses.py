"""Segmentation losses against float64 NumPy re-computations."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from cxr_jax.methods.segment import losses

RNG = np.random.default_rng(0)


def _np_dice(p, g, smooth=1.0):
    out = np.zeros((p.shape[0], p.shape[-1]))
    for b in range(p.shape[0]):
        for c in range(p.shape[-1]):
            pb, gb = p[b, ..., c].ravel(), g[b, ..., c].ravel()
            out[b, c] = (2 * np.dot(pb, gb) + smooth) / (pb.sum() + gb.sum() + smooth)
    return out


def test_dice_bce_matches_numpy_float64():
    logits = RNG.normal(0, 2, (3, 6, 5, 2))
    masks = (RNG.uniform(size=logits.shape) > 0.6).astype(np.float64)
    loss, terms = losses.dice_bce(logits=jnp.asarray(logits, jnp.float32), masks=jnp.asarray(masks), bce_weight=0.5)
    p = 1 / (1 + np.exp(-logits))
    dice = 1 - _np_dice(p, masks).mean()
    bce = np.mean(-(masks * np.log(p) + (1 - masks) * np.log(1 - p)))
    np.testing.assert_allclose(terms["dice_loss"], dice, rtol=1e-5)
    np.testing.assert_allclose(terms["bce"], bce, rtol=1e-5)
    np.testing.assert_allclose(loss, dice + 0.5 * bce, rtol=1e-5)


def test_soft_dice_limits():
    masks = np.zeros((1, 4, 4, 2))
    masks[0, :2, :, 0] = 1
    perfect = losses.soft_dice(probs=jnp.asarray(masks), masks=jnp.asarray(masks))
    np.testing.assert_allclose(perfect, [[1.0, 1.0]])  # Channel 1: both empty, smoothed to 1 instead of 0/0.
    disjoint = losses.soft_dice(probs=jnp.asarray(1 - masks[..., :1]), masks=jnp.asarray(masks[..., :1]))
    np.testing.assert_allclose(disjoint, [[1 / 17]], rtol=1e-6)  # (0 + 1) / (8 + 8 + 1).


def test_dice_bce_gradients():
    masks = jnp.asarray((RNG.uniform(size=(2, 4, 4, 1)) > 0.5).astype(np.float32))

    def f(logits):
        return losses.dice_bce(logits=logits, masks=masks, bce_weight=1.0)[0]

    check_grads(f, (jnp.asarray(RNG.normal(size=(2, 4, 4, 1)), jnp.float32),), order=1, modes=["rev"],
                atol=1e-2, rtol=1e-2)
    assert jax.grad(f)(jnp.zeros((2, 4, 4, 1))).shape == (2, 4, 4, 1)
