"""Supervised segmentation of anatomical structures with a U-Net (soft Dice + BCE, Adam).

The project's lung segmenter (DGM's lung boxes when a set has no lung masks) and LD's transfer target. Each
structure in `model.structures` is one sigmoid channel read from the examples' `mask_<structure>`; training
may draw from several sets (`data.train` and every spec in `data.extra_train`), all at the run's image size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow as tf

from cxr_jax import runs
from cxr_jax.config import ConfigError
from cxr_jax.data import augment, sources
from cxr_jax.methods.segment import losses
from cxr_jax.metrics import image_grid
from cxr_jax.models import unet
from cxr_jax.train import state as state_lib
from cxr_jax.train.method import Method


class Segment(Method):
    """A `unet.SegmentationUNet` with one channel per structure."""

    key_metrics = ("loss", "dice")

    def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None):
        self.mesh = mesh  # Per-example losses: GSPMD shards the step; the mesh only places imported weights.
        self.config = config
        m = config.model
        pools = unet.num_pools(m.layers)
        if config.image_size % 2**pools:
            raise ConfigError(f"image_size={config.image_size} must be divisible by 2^{pools} (the encoder's pools)")
        if not m.structures:
            raise ConfigError("model.structures is empty: name at least one structure (e.g. lungs)")
        dtype = jnp.bfloat16 if config.mixed_precision else jnp.float32
        self.model = unet.SegmentationUNet(len(m.structures), tuple(m.layers), tuple(map(tuple, m.widths)), dtype)
        self.schedule = optax.cosine_decay_schedule(config.optim.learning_rate, config.train.num_steps)
        self.tx = {"model": optax.adamw(self.schedule, weight_decay=config.optim.weight_decay)}

    def train_data(self):
        """Images and their [S, S, C] masks from `data.train` and `data.extra_train`, and the augmentation."""
        specs = [self.config.data.train, *self.config.data.extra_train.values()]
        return sources.concatenate([self.examples(spec) for spec in specs]), self.preprocess_train

    def examples(self, spec: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
        """`image` (or `file`) and `masks` uint8 [N, S, S, C] of one set, in `model.structures` order."""
        data = sources.load(spec, image_size=self.config.image_size, seed=self.config.seed)
        return sources.with_masks(data, self.config.model.structures, spec)

    def preprocess_train(self, example):
        """One random affine for image and masks together, contrast on the image, image in [-1, 1]."""
        geometry_seed, contrast_seed = tf.unstack(augment.split_seed(example["seed"], 2))
        a = self.config.augment
        image = augment.to_unit(example["image"])
        stacked = tf.concat([image, tf.cast(example["masks"], tf.float32)], axis=-1)
        stacked = augment.random_affine(stacked, geometry_seed, degrees=a.degrees, translate=a.translate,
                                        scale=tuple(a.scale))
        image = augment.random_contrast(stacked[..., :1] * 2.0 - 1.0, contrast_seed, a.contrast)
        return {"image": image, "masks": tf.cast(stacked[..., 1:] > 0.5, tf.float32)}

    def evaluate(self, state: state_lib.TrainState, mesh, outdir) -> dict[str, float]:
        """See `cxr_jax.methods.segment.evaluate` (imported here: training needs none of its plotting)."""
        from cxr_jax.methods.segment import evaluate

        return evaluate.evaluate(self, state, mesh, outdir)

    def init(self, rng: jax.Array, batch) -> state_lib.TrainState:
        """Parameters, BatchNorm statistics and the optimizer state."""
        variables = self.model.init(rng, batch["image"], train=False)
        return state_lib.TrainState.create({"model": variables["params"]}, self.tx,
                                           {"batch_stats": variables["batch_stats"]})

    def load_pretrained(self, state: state_lib.TrainState) -> state_lib.TrainState:
        """`state` with the encoder (weights and BatchNorm statistics) of the LD run `model.encoder_from`."""
        if not self.config.model.encoder_from:
            return state
        run = self.config.model.encoder_from
        source_config, _, source, _ = runs.restore_run(run, "ld", needed="an LD run (model.encoder_from)",
                                                       mesh=self.mesh)
        if tuple(source_config.model.layers) != tuple(self.config.model.layers):
            raise ConfigError(f"model.encoder_from={run!r}: needs an LD run with model.layers="
                              f"{tuple(self.config.model.layers)}; it has layers {tuple(source_config.model.layers)}")
        params = {**state.params["model"], "unet": {**state.params["model"]["unet"],
                                                    "encoder": source.params["model"]["encoder"]}}
        stats = state.model_state["batch_stats"]
        stats = {**stats, "unet": {**stats["unet"], "encoder": source.model_state["batch_stats"]["encoder"]}}
        return state.replace(params={**state.params, "model": params},
                             model_state={**state.model_state, "batch_stats": stats})

    def train_step(self, state: state_lib.TrainState, batch):
        """One AdamW step on mean (1 − soft Dice) + `loss.bce` · BCE; the encoder stays fixed while frozen."""

        def loss_fn(params):
            logits, updates = self.model.apply({"params": params, **state.model_state}, batch["image"],
                                               train=True, mutable=["batch_stats"])
            loss, terms = losses.dice_bce(logits=logits, masks=batch["masks"], bce_weight=self.config.loss.bce)
            hard = losses.soft_dice(probs=(logits > 0).astype(jnp.float32), masks=batch["masks"]).mean()
            return loss, ({**terms, "dice": hard}, updates)

        (loss, (terms, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["model"])
        new_state = state.apply_gradients("model", grads, self.tx["model"])
        if self.config.optim.freeze_encoder_steps:
            new_state = self._keep_frozen_encoder(state, new_state)
        new_state = new_state.replace(step=state.step + 1, model_state=dict(updates))
        metrics = {"loss": loss, **terms, "learning_rate": self.schedule(state.step),
                   **state_lib.norms(state.params["model"], grads)}
        return new_state, metrics

    def _keep_frozen_encoder(self, old: state_lib.TrainState, new: state_lib.TrainState) -> state_lib.TrainState:
        """`new` with `old`'s encoder while old.step < optim.freeze_encoder_steps (weight decay included)."""
        frozen = old.step < self.config.optim.freeze_encoder_steps
        model = new.params["model"]
        encoder = jax.tree.map(lambda a, b: jnp.where(frozen, a, b), old.params["model"]["unet"]["encoder"],
                               model["unet"]["encoder"])
        return new.replace(params={**new.params, "model": {**model, "unet": {**model["unet"], "encoder": encoder}}})

    def predict(self, state: state_lib.TrainState, batch) -> jax.Array:
        """Per-structure probabilities [B, S, S, C]."""
        logits = self.model.apply({"params": state.params["model"], **state.model_state}, batch["image"])
        return jax.nn.sigmoid(logits)

    def samples(self, state: state_lib.TrainState, mesh) -> np.ndarray:
        """Data.eval's first images with the predicted structures' outlines (`segmenter.overlay`), side by side."""
        from cxr_jax.methods.segment import segmenter

        images = self.sample_examples["image"]
        probs, _ = runs.predict(self, state, {"image": images}, mesh)
        return image_grid([[np.asarray(segmenter.overlay(x[..., 0], (p > 0.5).astype(np.uint8)))
                            for x, p in zip(images, probs)]], titles=(segmenter.legend(self.config.model.structures),))
