"""Shared numerical helpers against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from cxr_jax.ops import l2_normalize, relu


def test_l2_normalize_matches_numpy_and_has_finite_gradients_at_zero():
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    x[2] = 0.0  # A zero row (e.g. a region embedding whose cluster has no mass anywhere).
    want = x / np.maximum(np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True), 1e-12)
    np.testing.assert_allclose(l2_normalize(jnp.asarray(x)), want, rtol=1e-6, atol=1e-7)
    grad = jax.grad(lambda v: jnp.sum(l2_normalize(v) * jnp.arange(8.0)))(jnp.asarray(x))
    assert np.isfinite(grad).all()  # At the zero row: 1/eps per unit of upstream gradient, as torch's.
    np.testing.assert_allclose(grad[2], np.arange(8.0) / 1e-12, rtol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_relu_and_its_gradient_match_jax_nn_relu(jit):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 5, 3)).astype(np.float32)).at[0, 0, 0].set(0.0)
    w = jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape)

    def grad(f):
        g = jax.grad(lambda v: jnp.sum(f(v) * w))
        return jax.jit(g) if jit else g

    np.testing.assert_array_equal(relu(x), jax.nn.relu(x))
    np.testing.assert_array_equal(grad(relu)(x), grad(jax.nn.relu)(x))  # Also at x = 0, where both give 0.
    away = jnp.where(x >= 0, x + 0.1, x - 0.1)  # Away from the kink.
    check_grads(relu, (away,), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)
