"""LD pre-training: views whose patches line up, the two stages, the step."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from cxr_jax import bench, parallel
from cxr_jax import config as config_lib
from cxr_jax.config import ConfigError
from cxr_jax.data import augment
from cxr_jax.methods.ld import trainer as ld
from cxr_jax.train import loop
from tests.conftest import ROOT

SMOKE = f"{ROOT / 'configs' / 'ld.py'}:smoke"


def _pool(images, grid):
    """[N, S, S, C] → [N, grid, grid, C] patch means."""
    n, s, _, c = images.shape
    return np.asarray(images).reshape(n, grid, s // grid, grid, s // grid, c).mean(axis=(2, 4))


def test_align_view2_undoes_every_turn_of_a_planted_pattern():
    image = np.zeros((16, 16, 1), np.float32)
    image[0:4, 4:8] = 1.0  # Patch (row 0, col 1) of a 4×4 grid…
    image[8:12, 12:16] = 0.5  # …and a dimmer one at (2, 3), so no turn maps the pattern onto itself.
    want = _pool(image[None], 4)
    for k in range(4):
        for flip in (0, 1):
            turned = augment.rot_flip(tf.constant(image), k=k, flip=flip).numpy()
            if (k + 2 * flip) % 4:  # Flipping both axes is a 180° turn: the official 8 draws are 4 rotations.
                assert not np.array_equal(_pool(turned[None], 4), want)
            back = ld.align_view2(jnp.asarray(_pool(turned[None], 4)), k=jnp.array([k]), flip=jnp.array([flip]))
            np.testing.assert_array_equal(back, want)


def test_views_without_jitter_line_up_after_alignment():
    overrides = ["augment.base_degrees=0.0", "augment.view_degrees=0.0", "augment.crop_area=(1.0, 1.0)",
                 "augment.brightness=(1.0, 1.0)", "augment.contrast=(1.0, 1.0)"]
    method = ld.LD(config_lib.load(SMOKE, overrides))
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 1)).astype(np.uint8)
    turns = set()
    for i in range(12):
        out = method.preprocess_train({"image": tf.constant(image), "seed": tf.constant([1, i], tf.int64)})
        turns.add((int(out["k"]), int(out["flip"])))
        assert 0.2 <= float(out["mix"]) <= 0.8
        v1, v2 = _pool(out["view1"].numpy()[None], 4), _pool(out["view2"].numpy()[None], 4)
        back = ld.align_view2(jnp.asarray(v2), k=out["k"].numpy()[None], flip=out["flip"].numpy()[None])
        np.testing.assert_allclose(back, v1, atol=1e-5)
        flips = [image, image[:, ::-1], image[::-1], image[::-1, ::-1]]  # The base's shared random flips.
        assert any(np.allclose(out["view1"].numpy(), f / 127.5 - 1, atol=1e-5) for f in flips)
    assert len(turns) >= 5  # The turn is drawn per example.


def test_views_without_turns_line_up_as_they_are():
    overrides = ["augment.turn_view2=False", "augment.view_degrees=0.0", "augment.brightness=(1.0, 1.0)",
                 "augment.contrast=(1.0, 1.0)"]
    method = ld.LD(config_lib.load(SMOKE, overrides))
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 1)).astype(np.uint8)
    for i in range(6):
        out = method.preprocess_train({"image": tf.constant(image), "seed": tf.constant([1, i], tf.int64)})
        assert (int(out["k"]), int(out["flip"])) == (0, 0)
        np.testing.assert_allclose(out["view2"], out["view1"], atol=1e-5)  # The shared base, not turned.


def test_stage_one_leaves_the_clustering_head_alone_and_stage_two_trains_it():
    config = config_lib.load(SMOKE)
    mesh = parallel.make_mesh(jax.devices()[:1])
    s = loop.setup(config, mesh=mesh)
    try:
        step_fn = jax.jit(chex.assert_max_traces(s.method.train_step, n=1))
        state = s.init_fn(jax.random.key(0), s.first_batch)
        before = state.params["model"]["cluster"]
        one, metrics = step_fn(state, s.first_batch)
        chex.assert_trees_all_equal(one.params["model"]["cluster"], before)
        assert float(metrics["stage"]) == 1
        assert 1.0 <= float(metrics["clusters_used"]) <= config.model.num_clusters
        c = config.loss
        np.testing.assert_allclose(metrics["loss"], c.patch * metrics["patch"] + c.mixup * metrics["mixup"],
                                   rtol=1e-6)
        late = state.replace(step=jnp.full_like(state.step, c.stage1_steps))
        two, metrics = step_fn(late, s.first_batch)
        assert not np.allclose(two.params["model"]["cluster"]["Conv_0"]["kernel"], before["Conv_0"]["kernel"])
        assert float(metrics["stage"]) == 2
        want = (c.patch * metrics["patch"] + c.mixup * metrics["mixup"] + c.region * metrics["region"]
                + c.entropy * metrics["entropy"])
        np.testing.assert_allclose(metrics["loss"], want, rtol=1e-6)
        for _ in range(6):  # The same batch: the patch loss falls.
            two, later = step_fn(two, s.first_batch)
        assert float(later["patch"]) < float(metrics["patch"])
    finally:
        s.batches.close()


def test_bad_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="batch_size=7 must be even"):
        ld.LD(config_lib.load(SMOKE, ["batch_size=7"]))
    with pytest.raises(ConfigError, match="loss.grid=5"):
        ld.LD(config_lib.load(SMOKE, ["loss.grid=5"]))


@pytest.mark.slow  # ~38 s; cheaper: test_model's remat test.
def test_remat_shrinks_the_compiled_step():
    """`model.remat` recomputes conv blocks in the backward pass (more FLOPs) and stores fewer activations."""
    plans = {remat: bench.run(config_lib.load(SMOKE, [f"model.remat={remat}"]),
                              compile_only=True) for remat in (False, True)}
    assert plans[True]["flops_per_step"] > 1.1 * plans[False]["flops_per_step"]
    # A tenth at least: the step's other buffers (losses, optimizer) are a large share at the smoke shape.
    assert plans[True]["xla_temp_memory_mb"] < 0.9 * plans[False]["xla_temp_memory_mb"]


def test_shape_prior_trains_the_critic_in_stage_two_only():
    config = config_lib.load(SMOKE, ["shape.weight=0.5", "shape.critic_learning_rate=1.0"])
    s = loop.setup(config, mesh=parallel.make_mesh(jax.devices()[:1]))
    try:
        real = np.asarray(s.first_batch["real_masks"])
        assert real.shape == (config.batch_size, 2, config.image_size, config.image_size, 1)
        assert set(np.unique(real)) == {0.0, 1.0}
        step_fn = jax.jit(s.method.train_step)
        state = s.init_fn(jax.random.key(0), s.first_batch)
        one, metrics = step_fn(state, s.first_batch)
        chex.assert_trees_all_equal((one.params["critic"], one.opt_state["critic"]),
                                    (state.params["critic"], state.opt_state["critic"]))
        np.testing.assert_allclose(metrics["loss"], metrics["patch"] + metrics["mixup"], rtol=1e-6)
        c = config.loss
        two, first = step_fn(state.replace(step=jnp.full_like(state.step, c.stage1_steps)), s.first_batch)
        assert not np.allclose(two.params["critic"]["Dense_1"]["kernel"], state.params["critic"]["Dense_1"]["kernel"])
        want = (c.patch * first["patch"] + c.mixup * first["mixup"] + c.region * first["region"]
                + c.entropy * first["entropy"] + 0.5 * first["shape_g"])
        np.testing.assert_allclose(first["loss"], want, rtol=1e-6)
        for _ in range(8):  # The same batch: the critic learns to tell the masks from channel 0.
            two, later = step_fn(two, s.first_batch)
        assert float(later["shape_d"]) < float(first["shape_d"])
    finally:
        s.batches.close()


@pytest.mark.slow
def test_r1_penalises_the_critic_on_the_real_masks():
    config = config_lib.load(SMOKE, ["shape.weight=0.5", "shape.r1=10.0", "shape.critic_slope=1.0"])
    s = loop.setup(config, mesh=parallel.make_mesh(jax.devices()[:1]))
    try:
        state = s.init_fn(jax.random.key(0), s.first_batch)
        state = state.replace(step=jnp.full_like(state.step, config.loss.stage1_steps))
        assert s.method.critic.negative_slope == 1.0
        new, metrics = jax.jit(s.method.train_step)(state, s.first_batch)
        real = jnp.asarray(s.first_batch["real_masks"]).reshape(-1, config.image_size, config.image_size, 1)
        critic = functools.partial(s.method.critic.apply, {"params": state.params["critic"]})
        grads = np.asarray(jax.vmap(jax.grad(lambda x: critic(x[None])[0]))(real), np.float64)  # Map by map.
        np.testing.assert_allclose(metrics["shape_r1"], np.mean(np.sum(grads ** 2, axis=(1, 2, 3))), rtol=1e-4)
        config.shape.r1 = 0.0  # Same step without the penalty: the critic moves elsewhere.
        plain, plain_metrics = jax.jit(ld.LD(config).train_step)(state, s.first_batch)
        assert "shape_r1" not in plain_metrics
        np.testing.assert_allclose(plain_metrics["shape_d"], metrics["shape_d"], rtol=1e-6)
        assert not np.allclose(plain.params["critic"]["Dense_1"]["kernel"], new.params["critic"]["Dense_1"]["kernel"])
    finally:
        s.batches.close()


def test_cluster_perplexity_counts_the_clusters_in_use():
    k = 6
    np.testing.assert_allclose(ld.cluster_perplexity(jnp.full((2, 4, 4, k), 1.0 / k)), k, rtol=1e-6)
    one_hot = jax.nn.one_hot(jnp.zeros((2, 4, 4), jnp.int32), k)
    np.testing.assert_allclose(ld.cluster_perplexity(one_hot), 1.0, rtol=1e-6)
    halves = jax.nn.one_hot(jnp.arange(32).reshape(2, 4, 4) % 2, k)  # Two clusters, half the pixels each.
    np.testing.assert_allclose(ld.cluster_perplexity(halves), 2.0, rtol=1e-6)
