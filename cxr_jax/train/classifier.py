"""Normal/abnormal classification: the loop's first method and DGM's downstream baseline.

A method supplies what the shared loop cannot know: its data and preprocessing, `init`, and a pure
`train_step(state, batch) -> (state, metrics)`; evaluation lives in `cxr_jax.evaluate`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cxr_jax.data import augment, sources
from cxr_jax.models import resnet
from cxr_jax.train import state as state_lib


def sigmoid_bce(*, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example binary cross-entropy from logits, in float32."""
    return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels.astype(jnp.float32))


class Classifier:
    """A ResNet with one abnormality logit, trained with binary cross-entropy and AdamW."""

    def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None):
        del mesh  # A per-example mean: GSPMD shards it without explicit collectives.
        self.config = config
        dtype = jnp.bfloat16 if config.mixed_precision else jnp.float32
        m = config.model
        self.model = resnet.ResNet(tuple(m.stage_sizes), m.block, m.width, m.num_classes, dtype=dtype)
        self.schedule = optax.warmup_cosine_decay_schedule(
            0.0, config.optim.learning_rate, config.optim.warmup_steps, config.train.num_steps)
        self.tx = {"model": optax.adamw(self.schedule, weight_decay=config.optim.weight_decay)}

    def train_data(self):
        """Host-side training examples and the per-example tf.data preprocessing."""
        spec = self.config.data.train
        examples = sources.load(spec, image_size=self.config.image_size, seed=self.config.seed)
        return sources.labelled_images(examples, spec.source), self.preprocess_train

    def preprocess_train(self, example):
        """Random shift and contrast, then [-1, 1] floats."""
        shift_seed, contrast_seed = tf_split(example["seed"])
        image = augment.to_float(example["image"])
        image = augment.random_shift(image, shift_seed, self.config.augment.max_shift)
        image = augment.random_contrast(image, contrast_seed, self.config.augment.contrast)
        return {"image": image, "label": example["label"]}

    def preprocess_eval(self, example):
        """Eval images: [-1, 1] floats, no augmentation."""
        return {**example, "image": augment.to_float(example["image"])}

    def init(self, rng: jax.Array, batch) -> state_lib.TrainState:
        """Parameters and optimizer state for a batch of this shape."""
        variables = self.model.init(rng, batch["image"], train=False)
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


def tf_split(seed):
    """Two independent stateless seeds from one."""
    seeds = augment.split_seed(seed, 2)
    return seeds[0], seeds[1]
