"""Shared numerical helpers against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.ops import l2_normalize


def test_l2_normalize_matches_numpy_and_has_finite_gradients_at_zero():
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    x[2] = 0.0  # A zero row (e.g. a region embedding whose cluster has no mass anywhere).
    want = x / np.maximum(np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True), 1e-12)
    np.testing.assert_allclose(l2_normalize(jnp.asarray(x)), want, rtol=1e-6, atol=1e-7)
    grad = jax.grad(lambda v: jnp.sum(l2_normalize(v) * jnp.arange(8.0)))(jnp.asarray(x))
    assert np.isfinite(grad).all()  # At the zero row: 1/eps per unit of upstream gradient, as torch's.
    np.testing.assert_allclose(grad[2], np.arange(8.0) / 1e-12, rtol=1e-6)
