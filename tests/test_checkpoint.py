import jax
import jax.numpy as jnp
import optax

from cxr_jax import checkpoint, parallel
from cxr_jax.train.state import TrainState
from tests.conftest import assert_trees_equal


def test_orbax_round_trip_keeps_structure_types_and_values(tmp_path):
    params = {"g": {"w": jnp.arange(6.0).reshape(2, 3)}, "d": {"b": jnp.ones(4)}}
    tx = {"g": optax.adam(1e-3), "d": optax.sgd(0.1, momentum=0.9)}
    state = TrainState.create(params, tx, {"batch_stats": {"mean": jnp.zeros(3)}})
    state = state.apply_gradients("g", jax.tree.map(jnp.ones_like, params["g"]), tx["g"])
    state = state.replace(step=state.step + 5)
    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, state, {"step": step, "batch_size": 8})
    ckpt.wait()
    assert ckpt.latest_step() == 3
    assert sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == [2, 3]
    abstract = checkpoint.abstract_like(state, parallel.replicated(parallel.make_mesh()))
    restored, meta = ckpt.restore(3, abstract)
    ckpt.close()
    assert meta == {"step": 3, "batch_size": 8}
    assert type(restored.opt_state["g"][0]) is type(state.opt_state["g"][0])  # ScaleByAdamState, not a list.
    assert_trees_equal(restored, state)
