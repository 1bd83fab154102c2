"""The segment method: joint image/mask augmentation, several training sets, one trace, errors."""

import chex
import jax
import numpy as np
import pytest
import tensorflow as tf

from cxr_jax import config as config_lib
from cxr_jax import parallel
from cxr_jax.config import ConfigError
from cxr_jax.data import sources
from cxr_jax.methods.segment import trainer as segment
from cxr_jax.train import loop
from tests.conftest import ROOT, data_spec

SMOKE = f"{ROOT / 'configs' / 'segment.py'}:smoke"


def test_augmentation_moves_image_and_masks_together():
    config = config_lib.load(SMOKE, ["augment.contrast=0.0", "augment.degrees=30.0", "augment.translate=0.2"])
    method = segment.Segment(config)
    mask = np.zeros((32, 32, 1), np.uint8)
    mask[5:20, 8:14] = 1
    mask[22:28, 3:30] = 1
    for k in range(5):
        out = method.preprocess_train({"image": tf.constant(mask * 255), "masks": tf.constant(mask),
                                       "seed": tf.constant([3, k], tf.int64)})
        image, masks = out["image"].numpy(), out["masks"].numpy()
        assert 0 < masks.sum() != mask.sum()  # The geometry changed…
        np.testing.assert_array_equal(image > 0, masks > 0.5)  # …identically for both.


def test_training_sets_concatenate_and_missing_masks_are_named():
    config = config_lib.load(SMOKE)
    config.data.extra_train.more = data_spec("phantom", split="valid", num_examples=16)
    examples, _ = segment.Segment(config).train_data()
    assert examples["image"].shape == (64 + 16, 32, 32, 1) and examples["masks"].shape == (80, 32, 32, 1)
    assert set(np.unique(examples["masks"])) == {0, 1}
    config.model.structures = ("lungs", "spleen")
    with pytest.raises(sources.DataError, match=r"no \['spleen'\] masks"):
        segment.Segment(config).train_data()
    with pytest.raises(ConfigError, match="divisible by 2\\^4"):
        segment.Segment(config_lib.load(SMOKE, ["image_size=24"]))


def test_steps_lower_the_loss_and_trace_once():
    config = config_lib.load(SMOKE, ["optim.learning_rate=0.01"])
    mesh = parallel.make_mesh(jax.devices()[:1])
    s = loop.setup(config, mesh=mesh)
    try:
        state = s.init_fn(jax.random.key(0), s.first_batch)
        step = chex.assert_max_traces(s.method.train_step, n=1)
        step_fn = jax.jit(step, donate_argnums=0)
        batch = s.first_batch
        losses = []
        for _ in range(8):  # The same batch: the loss must fall.
            state, metrics = step_fn(state, batch)
            losses.append(float(metrics["loss"]))
        assert losses[-1] < 0.8 * losses[0]
        probs = s.method.predict(state, batch)
        assert probs.shape == (8, 32, 32, 1) and 0 <= float(probs.min()) and float(probs.max()) <= 1
    finally:
        s.batches.close()


@pytest.mark.slow
def test_transfer_starts_from_the_ld_encoder_and_keeps_it_frozen(ld_run, tmp_path):
    from cxr_jax import runs

    _, ld_state, _ = runs.restore_method(config_lib.load_run(ld_run), ld_run, parallel.make_mesh())
    want = ld_state.params["model"]["encoder"]
    for freeze, workdir in ((2, tmp_path / "frozen"), (0, tmp_path / "tuned")):
        config = config_lib.load(SMOKE, ["train.num_steps=2", f"model.encoder_from={ld_run}",
                                         f"optim.freeze_encoder_steps={freeze}"])
        state = loop.train(config, workdir)
        got = state.params["model"]["unet"]["encoder"]
        same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), got, want))
        assert all(same) if freeze else not any(same)
    config.model.layers = (4, "M", 8, "M", 8, "M", 8, "M", 16)
    with pytest.raises(ConfigError, match="needs an LD run with model.layers"):
        loop.train(config, tmp_path / "mismatch")
