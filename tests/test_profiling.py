"""cxr_jax.profiling: HLO ops named and grouped by what they compute, and their time from a real trace."""

import jax
import jax.numpy as jnp
import pytest

from cxr_jax import profiling


def _conv_loss(w, x):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jnp.tanh(y) ** 2) + jnp.sum(x.reshape(-1, 8) @ w.reshape(-1, 16)[:8])


@pytest.fixture(scope="module")
def compiled():
    w, x = jnp.ones((3, 3, 8, 16)), jnp.ones((2, 32, 32, 8))
    return jax.jit(jax.grad(_conv_loss, argnums=(0, 1))).lower(w, x).compile(), (w, x)


def test_a_convolutions_gradient_has_each_role_once(compiled):
    categories = profiling.classify(compiled[0].as_text())
    convs = sorted(c for c in categories.values() if c.startswith("conv"))
    assert convs == ["conv forward", "conv input gradient", "conv kernel gradient"]
    assert "matmul" in categories.values()
    assert set(categories.values()) <= set(profiling.CATEGORIES)


def test_op_times_are_a_traces_events(compiled):
    result = profiling.op_times(compiled[0], compiled[1], steps=2, chain=False)
    ops = result["seconds_per_step"]
    assert list(ops) == list(profiling.CATEGORIES)
    assert ops["conv forward"] > 0 and ops["conv kernel gradient"] > 0 and ops["matmul"] > 0
    assert 0 < sum(ops.values()) <= 1.5 * result["wall_s_per_step"]  # Ops run within the step (1 core here).
    name, category, seconds, calls = result["top_ops"][0]
    assert seconds == max(s for _, _, s, _ in result["top_ops"]) and calls == 1.0


def test_table_sums_the_gradients_and_lists_a_peers_own_rows():
    ours = dict.fromkeys(profiling.CATEGORIES, 0.0) | {"conv input gradient": 0.25, "conv kernel gradient": 0.5}
    text = profiling.table(ours, {profiling.BACKWARD: 0.5, "optimizer": 0.125})
    assert f"| {profiling.BACKWARD} | 0.750 | 0.500 |" in text
    assert "| optimizer | 0.000 | 0.125 |" in text and "| **all ops** | 0.750 | 0.625 |" in text
    assert "matmul" not in text  # Rows that are zero on both sides are left out.
