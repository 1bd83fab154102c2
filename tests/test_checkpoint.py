import jax
import jax.numpy as jnp
import optax
import pytest

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


def _steps(directory):
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _tiny_state():
    return {"w": jnp.arange(3.0)}


def test_resolve_finds_latest_best_and_steps_and_names_what_is_missing(tmp_path):
    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", keep=1, best_metric="auc")
    # Step 3 saved between evaluations; step 5's evaluation failed (NaN, saved as None): neither can be best.
    for step, metrics in ((1, {"auc": 0.5}), (2, {"auc": 0.9}), (3, None), (4, {"auc": 0.7}), (5, {"auc": None})):
        ckpt.save(step, _tiny_state(), {"step": step}, metrics)
    ckpt.wait()
    assert _steps(tmp_path / "ckpt") == [2, 5]  # The best and the latest.
    ckpt.close()
    reader = checkpoint.Checkpointer(tmp_path / "ckpt", read_only=True, best_metric="auc")
    assert (reader.resolve("latest"), reader.resolve("best"), reader.resolve(2), reader.resolve("5")) == (5, 2, 2, 5)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 4 under .*there are \[2, 5\]"):
        reader.resolve("4")
    with pytest.raises(ValueError, match="expected 'latest', 'best' or a step number"):
        reader.resolve("first")
    lowest = checkpoint.Checkpointer(tmp_path / "ckpt", read_only=True, best_metric="auc", best_mode="min")
    assert lowest.resolve("best") == 2  # Only evaluated checkpoints that were kept count.
    with pytest.raises(FileNotFoundError, match="eval.best_metric is empty"):
        checkpoint.Checkpointer(tmp_path / "ckpt", read_only=True).resolve("best")
    with pytest.raises(FileNotFoundError, match="no evaluated checkpoint with a finite loss.*eval.every > 0"):
        checkpoint.Checkpointer(tmp_path / "ckpt", read_only=True, best_metric="loss").resolve("best")
    with pytest.raises(FileNotFoundError, match="no checkpoint under"):
        checkpoint.Checkpointer(tmp_path / "none", read_only=True, best_metric="auc").resolve("latest")


def test_the_best_checkpoint_survives_a_new_manager_and_ties_go_to_the_later_step(tmp_path):
    first = checkpoint.Checkpointer(tmp_path, keep=1, best_metric="loss", best_mode="min")
    for step, loss in ((1, 0.3), (2, 0.1), (3, 0.2)):
        first.save(step, _tiny_state(), {"step": step}, {"loss": loss})
    first.close()
    resumed = checkpoint.Checkpointer(tmp_path, keep=1, best_metric="loss", best_mode="min")  # Reads the metrics.
    for step, loss in ((4, 0.1), (5, 0.4)):
        resumed.save(step, _tiny_state(), {"step": step}, {"loss": loss})
    resumed.wait()
    assert _steps(tmp_path) == [4, 5] and resumed.best_step() == 4
    resumed.close()
