import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cxr_jax.train.state import TrainState, norms, step_rng


def test_two_optimizers_update_independently():
    params = {"g": {"w": jnp.ones(3)}, "d": {"w": jnp.full(2, 2.0)}}
    tx = {"g": optax.adam(0.1, b1=0.5, b2=0.999), "d": optax.sgd(0.5)}
    state = TrainState.create(params, tx)
    grads_d = {"w": jnp.array([1.0, -1.0])}
    state = state.apply_gradients("d", grads_d, tx["d"])
    np.testing.assert_allclose(state.params["d"]["w"], [1.5, 2.5])  # SGD: w - 0.5 g.
    np.testing.assert_array_equal(state.params["g"]["w"], params["g"]["w"])
    state = state.apply_gradients("g", {"w": jnp.array([2.0, -3.0, 0.0])}, tx["g"])
    # Adam's first step moves by lr * g / (|g| + eps) after bias correction: ±0.1, and 0 for g = 0.
    np.testing.assert_allclose(state.params["g"]["w"], [0.9, 1.1, 1.0], rtol=1e-6)
    np.testing.assert_allclose(state.params["d"]["w"], [1.5, 2.5])
    assert int(state.opt_state["g"][0].count) == 1


def test_create_requires_matching_names():
    with pytest.raises(ValueError, match="same names"):
        TrainState.create({"g": {}}, {"d": optax.sgd(1.0)})


def test_step_rng_depends_on_seed_and_step_only():
    a = jax.random.key_data(step_rng(0, jnp.int32(3)))
    np.testing.assert_array_equal(a, jax.random.key_data(step_rng(0, jnp.int32(3))))
    assert not np.array_equal(a, jax.random.key_data(step_rng(0, jnp.int32(4))))
    assert not np.array_equal(a, jax.random.key_data(step_rng(1, jnp.int32(3))))


def test_norms_match_numpy():
    tree = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([[12.0]])}
    out = norms(tree, tree)
    np.testing.assert_allclose(out["param_norm"], 13.0)
    np.testing.assert_allclose(out["grad_norm"], 13.0)
