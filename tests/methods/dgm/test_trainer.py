"""DGM's step: update order, gradients, EMA, one trace, normals in every batch, exact resume."""

import json
import subprocess
import sys

import chex
import jax
import numpy as np
import optax
import pytest

from cxr_jax import checkpoint, parallel
from cxr_jax import config as config_lib
from cxr_jax.config import ConfigError
from cxr_jax.methods.dgm import trainer as dgm
from cxr_jax.train import loop
from tests.conftest import ROOT, assert_trees_equal, cli_env

SMOKE = f"{ROOT / 'configs' / 'dgm.py'}:smoke"


@pytest.fixture(scope="module")
def smoke():
    config = config_lib.load(SMOKE, ["optim.ema_decay=0.9"])
    mesh = parallel.make_mesh(jax.devices()[:1])
    method = dgm.DGM(config, mesh)
    s = loop.setup(config, mesh=mesh, method=method)
    yield config, method, s
    s.batches.close()  # Stop the endless tf.data pipeline now, not whenever it is collected.


def test_batches_hold_the_configured_normals(smoke):
    config, method, s = smoke
    assert method.batch_composition == (4, 4)
    for _ in range(3):
        labels = np.asarray(next(s.batches)["label"])
        assert (labels == 0).sum() == 4 and (labels == 1).sum() == 4
    assert dgm.normal_composition(8, 0.01) == (1, 7)  # Never a batch without a real normal.
    with pytest.raises(ConfigError, match="normal_fraction"):
        dgm.normal_composition(8, 0.0)


def test_extra_training_sets_are_concatenated():
    config = config_lib.load(SMOKE, ["data.train.num_examples=6"])
    config.data.extra_train.more = config_lib.load(SMOKE).data.eval  # 32 phantom valid images.
    examples, _ = dgm.DGM(config).train_data()
    assert len(examples["image"]) == 6 + 32
    np.testing.assert_array_equal(examples["stratum"], examples["label"])


def _reference_grads(method, state, batch, lr):
    """The step written out plainly: D's SGD step, then G's gradient through the whole L_G, with new and old D."""
    z, is_normal = batch["image"], (batch["label"] == 0).astype(np.float32)
    fake = method.generator.apply({"params": state.params["g"]}, z)["normal"]
    d_grads = jax.grad(method.discriminator_loss)(state.params["d"], fake=fake, real=z, is_normal=is_normal)
    d_new = jax.tree.map(lambda p, g: p - lr * g, state.params["d"], d_grads)

    def g_objective(g_params, d_params):
        out = method.generator.apply({"params": g_params}, z)
        return method.generator_loss(out, d_params=d_params, image=z, is_normal=is_normal)[0]

    g_grad = jax.grad(g_objective)
    return d_grads, g_grad(state.params["g"], d_new), g_grad(state.params["g"], state.params["d"])


def _flat(tree):
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


@pytest.mark.slow  # ~90 s; the order is also checked against torch in test_torch_reference.py.
def test_step_updates_d_first_then_g_against_the_updated_d(smoke):
    config, method, s = smoke
    lr = 0.05  # SGD (update = −lr · gradient) makes the step's gradients readable from its update.
    sgd = dgm.DGM(config)
    sgd.tx = {"g": optax.sgd(lr), "d": optax.sgd(lr), "ae": optax.sgd(lr)}
    state = s.init_fn(jax.random.key(0), s.first_batch)
    state = state.replace(opt_state={k: sgd.tx[k].init(v) for k, v in state.params.items()})
    step = jax.jit(sgd.train_step)
    state, _ = step(state, s.first_batch)  # Away from initialisation, where D barely depends on its input.
    before = jax.device_get(state)
    after, metrics = jax.device_get(step(state, s.first_batch))
    reference = jax.jit(_reference_grads, static_argnums=(0, 3))
    d_grads, g_grads, g_grads_old_d = reference(sgd, before, s.first_batch, lr)
    step_d = (_flat(before.params["d"]) - _flat(after.params["d"])) / lr
    step_g = (_flat(before.params["g"]) - _flat(after.params["g"])) / lr
    scale = np.abs(_flat(g_grads)).max()
    np.testing.assert_allclose(step_d, _flat(d_grads), atol=1e-4 * np.abs(_flat(d_grads)).max())
    err_new_d, err_old_d = np.abs(step_g - _flat(g_grads)).max(), np.abs(step_g - _flat(g_grads_old_d)).max()
    assert err_new_d < 1e-4 * scale and err_old_d > 10 * err_new_d, (err_new_d, err_old_d, scale)
    # EMA: 0.9 · old EMA + 0.1 · new G.
    np.testing.assert_allclose(_flat(after.model_state["ema"]),
                               0.9 * _flat(before.model_state["ema"]) + 0.1 * _flat(after.params["g"]), atol=1e-6)
    # The baseline autoencoder: one step on the batch's normal images only.
    normal = (np.asarray(s.first_batch["label"]) == 0).astype(np.float32)
    ae_grads = jax.grad(sgd.autoencoder_loss)(before.params["ae"], image=s.first_batch["image"],
                                              is_normal=normal)
    step_ae = (_flat(before.params["ae"]) - _flat(after.params["ae"])) / lr
    np.testing.assert_allclose(step_ae, _flat(ae_grads), atol=1e-4 * np.abs(_flat(ae_grads)).max())
    assert int(after.step) == int(before.step) + 1
    assert all(np.isfinite(float(v)) for v in metrics.values()) and "ae_recon" in metrics


def test_step_compiles_once(smoke):
    config, method, s = smoke
    state = s.init_fn(jax.random.key(0), s.first_batch)
    step = jax.jit(chex.assert_max_traces(method.train_step, n=1), donate_argnums=0)
    for _ in range(3):
        state, _ = step(state, next(s.batches))
    assert int(state.step) == 3


@pytest.mark.slow  # ~19 s compiling DGM's step; cheaper: test_checkpoint's round trip of a two-network state.
def test_the_state_of_both_networks_and_the_ema_round_trips_through_orbax(smoke, tmp_path):
    config, method, s = smoke
    state, _ = s.step_fn(s.init_fn(jax.random.key(0), s.first_batch), s.first_batch)
    ckpt = checkpoint.Checkpointer(tmp_path)
    ckpt.save(1, state, {"step": 1})
    ckpt.wait()
    restored, meta = ckpt.restore(1, s.abstract_state)
    ckpt.close()
    assert meta == {"step": 1} and set(restored.model_state) == {"ema"}
    assert_trees_equal(jax.device_get(restored), jax.device_get(state))  # Adam's namedtuples included.


@pytest.mark.slow
def test_resumed_training_matches_an_uninterrupted_run(tmp_path):
    whole = config_lib.load(SMOKE, ["train.num_steps=2", "train.checkpoint_every=1", "optim.ema_decay=0.9"])
    first_half = config_lib.load(SMOKE, ["train.num_steps=1", "train.checkpoint_every=1", "optim.ema_decay=0.9"])
    reference = loop.train(whole, tmp_path / "whole")
    loop.train(first_half, tmp_path / "resumed")
    resumed = loop.train(whole, tmp_path / "resumed")  # Continues from step 1's checkpoint.
    assert_trees_equal(jax.device_get(resumed), jax.device_get(reference))


def test_too_small_images_are_explained():
    config = config_lib.load(SMOKE, ["image_size=8"])
    with pytest.raises(ConfigError, match="image_size=8 is too small"):
        dgm.DGM(config)


def test_unknown_fakes_are_explained():
    config = config_lib.load(SMOKE, ["loss.fakes=normal"])
    with pytest.raises(ConfigError, match="loss.fakes='normal'"):
        dgm.DGM(config)


@pytest.mark.slow
def test_eight_devices_match_one_device():
    proc = subprocess.run([sys.executable, "-m", "tests.methods.dgm.devices", SMOKE], cwd=ROOT,
                          env=cli_env(devices=8), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    diffs = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("losses", "g", "d", "ae"):
        assert diffs[key] < 1e-4, (key, diffs)


