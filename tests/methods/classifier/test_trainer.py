"""The classifier's DGM downstream options: residue features and residue transplants."""

import jax
import numpy as np
import pytest
import tensorflow as tf

from cxr_jax import config as config_lib
from cxr_jax import parallel
from cxr_jax.config import ConfigError
from cxr_jax.methods.classifier import trainer as classifier
from cxr_jax.train import loop
from tests.conftest import SMOKE, final_state

DGM_SMOKE = SMOKE.replace("classifier.py", "dgm.py")


def _config(*overrides):
    return config_lib.load(SMOKE, ["data.train.num_examples=16", *overrides])


@pytest.mark.slow
def test_residue_features_are_the_dgm_residues_as_a_second_channel(dgm_run):
    method = classifier.Classifier(_config(f"model.residue_from={dgm_run}", "model.residue_features=True"))
    examples, _ = method.train_data()
    dgm_state, _ = final_state(DGM_SMOKE, dgm_run)
    dgm = config_lib.load_run(dgm_run)
    from cxr_jax.methods.dgm import trainer as dgm_lib

    generator = dgm_lib.DGM(dgm).generator
    z = examples["image"].astype(np.float32) / 127.5 - 1.0
    assert "ema" not in dgm_state.model_state  # The smoke DGM keeps no EMA: inference uses its parameters.
    want = generator.apply({"params": dgm_state.params["g"]}, z, method=generator.decompose)["residue"]
    np.testing.assert_allclose(examples["residue"], want, atol=1e-5)
    eval_example = method.preprocess_eval({k: tf.constant(v[0]) for k, v in examples.items()})
    assert eval_example["image"].shape == (32, 32, 2)
    np.testing.assert_allclose(eval_example["image"][..., 1], want[0, ..., 0], atol=1e-5)

    s = loop.setup(method.config, mesh=parallel.make_mesh(jax.devices()[:1]), method=method)
    try:
        assert s.first_batch["image"].shape == (8, 32, 32, 2)
        state, metrics = s.step_fn(s.init_fn(jax.random.key(0), s.first_batch), s.first_batch)
        assert np.isfinite(float(metrics["loss"]))
    finally:
        s.batches.close()


def test_transplant_turns_normal_images_into_abnormal_ones(dgm_run):
    config = _config(f"model.residue_from={dgm_run}", "augment.transplant=1.0", "augment.max_shift=0",
                     "augment.contrast=0.0")
    method = classifier.Classifier(config)
    examples, preprocess = method.train_data()
    donors = preprocess.keywords["donors"]
    assert "residue" not in examples and len(donors) == int((examples["label"] == 1).sum()) > 0
    normal, abnormal = np.flatnonzero(examples["label"] == 0)[0], np.flatnonzero(examples["label"] == 1)[0]
    for i, label in ((normal, 1), (abnormal, 1)):
        out = preprocess({"image": tf.constant(examples["image"][i]), "label": tf.constant(examples["label"][i]),
                          "seed": tf.constant([0, 7], tf.int64)})
        assert int(out["label"]) == label
        base = examples["image"][i].astype(np.float32) / 127.5 - 1.0
        if i == normal:  # Exactly one donor's residue was added (and clipped to [-1, 1]).
            errors = [np.abs(out["image"].numpy() - np.clip(base + d, -1, 1)).max() for d in donors]
            assert min(errors) < 1e-6
        else:
            np.testing.assert_allclose(out["image"].numpy(), base, atol=1e-6)


def test_residue_options_are_checked(dgm_run):
    with pytest.raises(ConfigError, match="need model.residue_from"):
        classifier.Classifier(_config("model.residue_features=True"))
    with pytest.raises(ConfigError, match="not both"):
        classifier.Classifier(_config(f"model.residue_from={dgm_run}", "model.residue_features=True",
                                      "augment.transplant=0.5"))
    method = classifier.Classifier(_config(f"model.residue_from={dgm_run}", "model.residue_features=True",
                                           "image_size=64"))
    with pytest.raises(ConfigError, match="image_size=32, this run at 64"):
        method.train_data()


@pytest.mark.slow
def test_a_residue_feature_run_evaluates(dgm_run, tmp_path):
    from cxr_jax import runs

    overrides = [f"model.residue_from={dgm_run}", "model.residue_features=True", "train.num_steps=3",
                 "data.train.num_examples=16", "data.eval.num_examples=16"]
    config = config_lib.load(SMOKE, overrides)
    loop.train(config, tmp_path)
    result = runs.evaluate(config, tmp_path)  # Restores the 2-channel model, residues computed for eval.
    assert result["num_examples"] == 16 and 0.0 <= result["auc"] <= 1.0
