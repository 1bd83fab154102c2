"""Normal/abnormal classification: the loop's first method and DGM's downstream task.

With `model.residue_from` (a DGM run) the classifier uses DGM's residue r either as a second input channel
(`model.residue_features`) or, with `augment.transplant` > 0, to make synthetic abnormal images: a normal
training image plus a random abnormal training image's residue (`augment.transplant_residue`), labelled
abnormal. Residues are computed once, on the host, when the data is loaded.

A method supplies what the shared loop cannot know: its data and preprocessing, `init`, and a pure
`train_step(state, batch) -> (state, metrics)`; evaluation lives in `methods.classifier.evaluate`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow as tf

from cxr_jax.config import ConfigError
from cxr_jax.data import augment, sources
from cxr_jax.methods.dgm import decompose
from cxr_jax.models import resnet
from cxr_jax.train import state as state_lib
from cxr_jax.train.method import Method


def sigmoid_bce(*, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example binary cross-entropy from logits, in float32."""
    return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels.astype(jnp.float32))


class Classifier(Method):
    """A ResNet with one abnormality logit, trained with binary cross-entropy and AdamW."""

    key_metrics = ("loss", "accuracy")

    def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None):
        del mesh  # A per-example mean: GSPMD shards it without explicit collectives.
        self.config = config
        dtype = jnp.bfloat16 if config.mixed_precision else jnp.float32
        m = config.model
        self.model = resnet.ResNet(tuple(m.stage_sizes), m.block, m.width, m.num_classes, dtype=dtype)
        self.schedule = state_lib.warmup_cosine(config.optim, config.train.num_steps)
        self.tx = {"model": optax.adamw(self.schedule, weight_decay=config.optim.weight_decay)}
        if (m.residue_features or config.augment.transplant) and not m.residue_from:
            raise ConfigError("model.residue_features and augment.transplant need model.residue_from (a DGM run)")
        if m.residue_features and config.augment.transplant:
            raise ConfigError("use residues as features (model.residue_features) or for transplants "
                              "(augment.transplant), not both: a transplanted image's own residue is unknown")

    def examples(self, spec: ml_collections.ConfigDict, *, ids: bool = False) -> dict[str, np.ndarray]:
        """Labelled images of one set, with their DGM residues (`residue`) when `model.residue_from` is set.

        With `ids`, also their `name` and `patient` where the source has them (`sources.labelled_images`).
        """
        data = sources.labelled_images(sources.load(spec, image_size=self.config.image_size, seed=self.config.seed),
                                       spec.source, ids=ids)
        if self.config.model.residue_from:
            if "image" not in data:
                raise ConfigError("residues are computed from images in memory: set data.*.stream=False")
            data["residue"] = decompose.residue_maps(self.config.model.residue_from, data["image"],
                                                     image_size=self.config.image_size)
        return data

    def train_data(self):
        """Host-side training examples and the per-example tf.data preprocessing.

        With `augment.transplant`, the abnormal training images' residues become the preprocessing's donors.
        """
        examples = self.examples(self.config.data.train)
        residues = examples["residue"] if self.config.model.residue_features else examples.pop("residue", None)
        if not self.config.augment.transplant:
            return examples, self.preprocess_train
        donors = residues[examples["label"] == 1]
        if not len(donors):
            raise sources.DataError("augment.transplant needs abnormal training images to take residues from")
        return examples, functools.partial(self.preprocess_train, donors=donors)

    def preprocess_train(self, example, donors: np.ndarray | None = None):
        """Random shift and contrast, then [-1, 1] floats; the residue channel, or a transplant from `donors`."""
        shift_seed, contrast_seed, transplant_seed = tf.unstack(augment.split_seed(example["seed"], 3))
        image, label = augment.to_float(example["image"]), example["label"]
        if donors is not None:
            image, label = self._transplant(image, label, donors, transplant_seed)
        image = augment.random_shift(image, shift_seed, self.config.augment.max_shift)
        image = augment.random_contrast(image, contrast_seed, self.config.augment.contrast)
        if "residue" in example:
            residue = augment.random_shift(example["residue"], shift_seed, self.config.augment.max_shift, fill=0.0)
            image = tf.concat([image, residue], axis=-1)
        return {"image": image, "label": label}

    def _transplant(self, image, label, donors: np.ndarray, seed):
        """With probability `augment.transplant`, a normal image gets a random donor residue and label 1."""
        coin_seed, donor_seed = tf.unstack(augment.split_seed(seed, 2))
        chosen = tf.logical_and(tf.equal(label, 0),
                                tf.random.stateless_uniform([], coin_seed) < self.config.augment.transplant)
        donor = tf.constant(donors)[tf.random.stateless_uniform([], donor_seed, 0, len(donors), dtype=tf.int32)]
        image = tf.where(chosen, augment.transplant_residue(image, donor), image)
        return image, tf.where(chosen, tf.ones_like(label), label)

    def preprocess_eval(self, example):
        """Eval images: [-1, 1] floats (with the residue channel if used), no augmentation."""
        image = augment.to_float(example["image"])
        if "residue" in example and self.config.model.residue_features:
            image = tf.concat([image, example["residue"]], axis=-1)
        return {**example, "image": image}

    def evaluate(self, state: state_lib.TrainState, mesh, outdir) -> dict[str, float]:
        """See `cxr_jax.methods.classifier.evaluate` (imported here: training needs none of its plotting)."""
        from cxr_jax.methods.classifier import evaluate

        return evaluate.evaluate(self, state, mesh, outdir)

    def init(self, rng: jax.Array, batch) -> state_lib.TrainState:
        """Parameters and optimizer state for images shaped like `batch['image']` (channels from the config)."""
        channels = 2 if self.config.model.residue_features else 1  # The image, and its residue if used.
        images = jnp.zeros((*batch["image"].shape[:-1], channels), batch["image"].dtype)
        variables = self.model.init(rng, images, train=False)
        return state_lib.TrainState.create({"model": variables["params"]}, self.tx,
                                           {"batch_stats": variables["batch_stats"]})

    def train_step(self, state: state_lib.TrainState, batch):
        """One AdamW step on the global batch's mean cross-entropy."""

        def loss_fn(params):
            logits, updates = self.model.apply(
                {"params": params, **state.model_state}, batch["image"], train=True, mutable=["batch_stats"])
            loss = sigmoid_bce(logits=logits[:, 0], labels=batch["label"]).mean()
            return loss, (logits[:, 0], updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["model"])
        new_state = state.apply_gradients("model", grads, self.tx["model"])
        new_state = new_state.replace(step=state.step + 1, model_state=dict(updates))
        accuracy = jnp.mean((logits > 0) == (batch["label"] > 0))
        metrics = {"loss": loss, "accuracy": accuracy, "learning_rate": self.schedule(state.step),
                   **state_lib.norms(state.params["model"], grads)}
        return new_state, metrics

    def predict(self, state: state_lib.TrainState, batch) -> jax.Array:
        """Abnormality logits [B] in float32."""
        logits = self.model.apply({"params": state.params["model"], **state.model_state}, batch["image"])
        return logits[:, 0].astype(jnp.float32)
