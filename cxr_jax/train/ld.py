"""LD pre-training (Chen et al., TPAMI 2023): patch, mixup and region discrimination on unlabelled images.

Each batch row is one image with two views (`augment.ld_views`). Rows i and i + B/2 form the official code's
image pair: their first views make one mixup image (weight `mix` of row i). The network sees the first views,
the second views and the mixups in one batch (one set of BatchNorm statistics, as the official code). The
second view's patch grid is turned back (`align_view2`) so that patch p of both views is the same anatomy.

Stage 1 (steps < `loss.stage1_steps`) trains L_pd + L_mix; stage 2 adds 10·L_ld + 0.1·L_ent, which also
trains the clustering head (it gets no gradient before). One run does both stages.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cxr_jax.config import ConfigError
from cxr_jax.data import augment, sources
from cxr_jax.losses import ld as losses
from cxr_jax.models import ld as ld_model
from cxr_jax.models import unet
from cxr_jax.train import state as state_lib


def align_view2(grid: jax.Array, *, k: jax.Array, flip: jax.Array) -> jax.Array:
    """Undoes `augment.rot_flip` on [N, g, g, D] grids: rotate back by k·90°, then by 180° where `flip`."""

    def one(x, k, flip):
        x = jax.lax.switch(k, [lambda x, i=i: jnp.rot90(x, -i, axes=(0, 1)) for i in range(4)], x)
        return jnp.where(flip > 0, x[::-1, ::-1], x)

    return jax.vmap(one)(grid, k, flip)


class LD:
    """`ld_model.LDNet` trained with Adam on LD's losses (weights and stages in `config.loss`)."""

    def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None):
        del mesh  # Global-batch losses: GSPMD gathers the patch features for the similarity matrix.
        self.config = config
        m, grid = config.model, config.loss.grid
        pools = unet.num_pools(m.layers)
        if config.image_size % 2**pools or config.image_size % grid:
            raise ConfigError(f"image_size={config.image_size} must be divisible by 2^{pools} (the encoder's "
                              f"pools) and by loss.grid={grid}")
        if config.batch_size % 2:
            raise ConfigError(f"batch_size={config.batch_size} must be even: rows i and i + B/2 are mixup pairs")
        dtype = jnp.bfloat16 if config.mixed_precision else jnp.float32
        self.model = ld_model.LDNet(m.embed_dim, m.num_clusters, tuple(m.layers), tuple(map(tuple, m.widths)),
                                    dtype, m.remat)
        self.schedule = optax.exponential_decay(config.optim.learning_rate, config.optim.halve_every, 0.5,
                                                staircase=True)
        self.tx = {"model": optax.adam(self.schedule)}

    def train_data(self):
        """The images of `data.train` and every `data.extra_train` set, and the two-view augmentation."""
        specs = [self.config.data.train, *self.config.data.extra_train.values()]
        parts = [sources.images_only(sources.load(spec, image_size=self.config.image_size, seed=self.config.seed),
                                     spec.source) for spec in specs]
        return sources.concatenate(parts), self.preprocess_train

    def preprocess_train(self, example):
        """Two views in [-1, 1] (the official Normalize(0.5, 0.5)), view 2's turn (k, flip) and mixup weight."""
        views = augment.ld_views(augment.to_unit(example["image"]), example["seed"], self.config.augment)
        return {**views, "view1": views["view1"] * 2.0 - 1.0, "view2": views["view2"] * 2.0 - 1.0}

    def preprocess_eval(self, example):
        """Eval images: [-1, 1] floats, no augmentation."""
        return {**example, "image": augment.to_float(example["image"])}

    def init(self, rng: jax.Array, batch) -> state_lib.TrainState:
        """Parameters, BatchNorm statistics and the optimizer state."""
        images = batch["view1"] if "view1" in batch else batch["image"]
        variables = self.model.init(rng, images, train=False)
        return state_lib.TrainState.create({"model": variables["params"]}, self.tx,
                                           {"batch_stats": variables["batch_stats"]})

    def losses(self, outputs: dict[str, jax.Array], batch, step: jax.Array) -> tuple[jax.Array, dict]:
        """The weighted total and each term, from the network's outputs on [view1; view2; mixups]."""
        c = self.config.loss
        n = batch["view1"].shape[0]
        patches = losses.patch_features(outputs["embedding"], grid=c.grid)
        first, second, mixed = patches[:n], patches[n:2 * n], patches[2 * n:]
        second = align_view2(second, k=batch["k"], flip=batch["flip"])
        terms = {"patch": losses.patch_discrimination(view1=first, view2=second, temperature=c.temperature),
                 "mixup": losses.mixup(mixed=mixed, first=first[:n // 2], second=first[n // 2:],
                                       weight=batch["mix"][:n // 2], temperature=c.temperature)}
        regions = losses.region_embeddings(embedding=outputs["embedding"][:2 * n],
                                           assignment=outputs["assignment"][:2 * n])
        terms["region"] = losses.region_discrimination(regions, temperature=c.region_temperature)
        terms["entropy"] = losses.binary_entropy(outputs["assignment"][:2 * n])
        stage2 = (step >= c.stage1_steps).astype(jnp.float32)
        total = (c.patch * terms["patch"] + c.mixup * terms["mixup"]
                 + stage2 * (c.region * terms["region"] + c.entropy * terms["entropy"]))
        return total, {**terms, "stage": 1.0 + stage2}

    def train_step(self, state: state_lib.TrainState, batch):
        """One Adam step on the network's outputs for [view1; view2; mixups of view1 pairs]."""
        v1 = batch["view1"]
        h = v1.shape[0] // 2
        w = batch["mix"][:h, None, None, None].astype(v1.dtype)
        images = jnp.concatenate([v1, batch["view2"], w * v1[:h] + (1.0 - w) * v1[h:]])

        def loss_fn(params):
            outputs, updates = self.model.apply({"params": params, **state.model_state}, images, train=True,
                                                mutable=["batch_stats"])
            loss, terms = self.losses(outputs, batch, state.step)
            return loss, (terms, updates)

        (loss, (terms, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["model"])
        new_state = state.apply_gradients("model", grads, self.tx["model"])
        new_state = new_state.replace(step=state.step + 1, model_state=dict(updates))
        metrics = {"loss": loss, **terms, "learning_rate": self.schedule(state.step),
                   **state_lib.norms(state.params["model"], grads)}
        return new_state, metrics

    def predict(self, state: state_lib.TrainState, batch) -> dict[str, jax.Array]:
        """Pixel embeddings [B, S, S, D] and cluster assignments [B, S, S, K] of eval images."""
        return self.model.apply({"params": state.params["model"], **state.model_state}, batch["image"])
