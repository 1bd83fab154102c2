"""The shared loop in this process (one CPU device)."""

import chex
import jax
import jax.numpy as jnp
import pytest

from cxr_jax import checkpoint, metrics, runs
from cxr_jax import config as config_lib
from cxr_jax.methods.classifier import trainer as classifier
from cxr_jax.train import loop
from tests.conftest import SMOKE, assert_trees_equal, final_state, image_folder


def _train(workdir, *overrides):
    config = config_lib.load(SMOKE, overrides)
    return loop.train(config, workdir)


def test_two_identical_runs_log_identical_losses_and_params(tmp_path):
    a = _train(tmp_path / "a", "eval.every=2")  # Evaluating during training must not change the training.
    b = _train(tmp_path / "b")
    log_a, log_b = metrics.read_jsonl(tmp_path / "a/metrics.jsonl"), metrics.read_jsonl(tmp_path / "b/metrics.jsonl")
    assert [r["step"] for r in log_a] == [2, 4, 6]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    for key in ("loss", "accuracy", "learning_rate", "grad_norm", "param_norm", "examples_per_sec", "step_time"):
        assert key in log_a[0]
    assert_trees_equal(jax.device_get(a.params), jax.device_get(b.params))
    assert (tmp_path / "a/config.json").is_file()
    assert list((tmp_path / "a/tensorboard").glob("events.out.tfevents.*"))
    history = metrics.read_jsonl(tmp_path / "a/eval/history.jsonl")
    assert [r["step"] for r in history] == [2, 4, 6] and {"auc", "loss", "accuracy"} <= set(history[0])
    assert not (tmp_path / "b/eval").exists() and not (tmp_path / "a/samples").exists()  # Off; no classifier samples.


@pytest.mark.slow  # ~45 s; the methods' step tests check that steps lower the loss.
def test_training_fits_a_small_set(tmp_path):
    # 32 phantom images, no augmentation: the loop must drive the training-set loss well below chance (ln 2).
    overrides = ["train.num_steps=100", "image_size=64", "model.width=16", "data.train.num_examples=32",
                 "data.eval.split=train", "data.eval.num_examples=32", "augment.max_shift=0", "augment.contrast=0.0"]
    _train(tmp_path, *overrides)
    result = runs.evaluate(config_lib.load(SMOKE, overrides), tmp_path)
    assert result["loss"] < 0.4 and result["auc"] > 0.95, result


@pytest.mark.slow
def test_step_is_traced_once(tmp_path, monkeypatch):
    traced = chex.assert_max_traces(classifier.Classifier.train_step, n=1)
    monkeypatch.setattr(classifier.Classifier, "train_step", traced)
    _train(tmp_path, "eval.every=3")  # Evaluation uses the loop's state: no second compile of the step.
    # Also under plain jit, called on many batches: no retrace.
    chex.clear_trace_counter()
    config = config_lib.load(SMOKE)
    s = loop.setup(config)
    state = s.init_fn(jax.random.key(0), s.first_batch)
    for _ in range(4):
        state, _ = s.step_fn(state, next(s.batches))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    original = classifier.Classifier.train_step

    def poisoned(self, state, batch):
        new_state, m = original(self, state, batch)
        return new_state, {**m, "loss": jnp.where(state.step >= 4, jnp.nan, m["loss"])}

    monkeypatch.setattr(classifier.Classifier, "train_step", poisoned)
    with pytest.raises(loop.NonFiniteError, match="loss = nan at step 5.*last good checkpoint \\(step 4\\)"):
        _train(tmp_path, "train.num_steps=8", "train.checkpoint_every=2", "train.log_every=4")
    assert checkpoint.Checkpointer(tmp_path / "checkpoints").latest_step() == 4


def test_a_failing_evaluation_keeps_the_steps_it_follows(tmp_path, monkeypatch):
    def broken(self, state, mesh, outdir):
        raise RuntimeError("evaluator bug")

    monkeypatch.setattr(classifier.Classifier, "evaluate", broken)
    with pytest.raises(RuntimeError, match="evaluator bug"):  # Smoke checkpoints every 3 steps: none before 2.
        _train(tmp_path, "eval.every=2")
    assert checkpoint.Checkpointer(tmp_path / "checkpoints").latest_step() == 2


@pytest.mark.slow
def test_init_from_starts_from_another_runs_params(tmp_path):
    source = _train(tmp_path / "source")
    # With a zero learning rate the params stay what init_from loaded.
    result = _train(tmp_path / "target", f"init_from={tmp_path / 'source'}", "optim.learning_rate=0.0",
                    "optim.weight_decay=0.0")
    assert_trees_equal(jax.device_get(result.params), jax.device_get(source.params))
    assert int(result.step) == config_lib.load(SMOKE).train.num_steps
    with pytest.raises(ValueError, match="no checkpoint under"):
        _train(tmp_path / "other", f"init_from={tmp_path / 'missing'}")


@pytest.mark.slow
def test_mixed_precision_keeps_fp32_params_and_matches_fp32_loss(tmp_path):
    state = _train(tmp_path / "bf16", "mixed_precision=true")
    for leaf in jax.tree.leaves((state.params, state.opt_state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32
    _train(tmp_path / "fp32")
    bf16 = metrics.read_jsonl(tmp_path / "bf16/metrics.jsonl")[0]["loss"]
    fp32 = metrics.read_jsonl(tmp_path / "fp32/metrics.jsonl")[0]["loss"]
    assert bf16 != fp32 and abs(bf16 - fp32) < 0.05 * abs(fp32)


def test_resume_after_finish_restores_and_does_nothing(tmp_path, monkeypatch):
    first = _train(tmp_path)
    traced = chex.assert_max_traces(classifier.Classifier.train_step, n=0)  # Not even compiled.
    monkeypatch.setattr(classifier.Classifier, "train_step", traced)
    again = _train(tmp_path)
    assert_trees_equal(jax.device_get(first.params), jax.device_get(again.params))
    state, step = final_state(SMOKE, tmp_path)
    assert step == 6
    assert_trees_equal(state.params, jax.device_get(first.params))


@pytest.mark.slow
def test_streaming_from_files_trains_exactly_as_from_memory(tmp_path):
    image_folder(tmp_path / "data", num=16)
    data = [f"data.train.{k}={v}" for k, v in (("source", "nih1000"), ("path", tmp_path / "data"),
                                                ("split", "train"))]
    memory = _train(tmp_path / "memory", *data)
    streamed = _train(tmp_path / "streamed", *data, "data.train.stream=True")
    assert_trees_equal(jax.device_get(memory.params), jax.device_get(streamed.params))


def test_dispatch_runs_at_most_max_in_flight_steps_ahead():
    @jax.jit
    def step(x):  # ~0.1 s of matmuls, chained like the train state: unbounded, every step would queue at once.
        return jax.lax.fori_loop(0, 40, lambda _, y: jnp.tanh(y @ y / 512), x)

    x, pending = jnp.eye(512), []
    jax.block_until_ready(step(x))  # Compiled before the loop.
    for i in range(6):
        x = step(x)
        pending.append((i, x))
        loop.wait_for_all_but(pending, loop.MAX_IN_FLIGHT)
        assert all(out.is_ready() for _, out in pending[:-loop.MAX_IN_FLIGHT])
    assert not pending[-1][1].is_ready()  # Dispatch still runs ahead: the last step is being computed.
