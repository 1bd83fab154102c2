"""LD pre-training (Chen et al., TPAMI 2023): patch, mixup and region discrimination on unlabelled images.

Each batch row is one image with two views (`augment.ld_views`). Rows i and i + B/2 form the official code's
image pair: their first views make one mixup image (weight `mix` of row i). The network sees the first views,
the second views and the mixups in one batch (one set of BatchNorm statistics, as the official code). The
second view's patch grid is turned back (`align_view2`) so that patch p of both views is the same anatomy.

Stage 1 (steps < `loss.stage1_steps`) trains L_pd + L_mix; stage 2 adds 10·L_ld + 0.1·L_ent, which also
trains the clustering head (it gets no gradient before). One run does both stages.

With `shape.weight` > 0, stage 2 also trains the shape prior (shape-guided segmentation, as the official
retinal code): a critic learns real masks (`data.shape_masks`, a handful, unpaired) from cluster channel 0 of
both views, and the network gets `shape.weight` · L_G for fooling it. The critic's step uses the same forward
pass's (stopped) channel 0, as the official order (network first, then critic).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cxr_jax.config import ConfigError
from cxr_jax.data import sources
from cxr_jax.methods.ld import geometry, losses
from cxr_jax.methods.ld import model as ld_model
from cxr_jax.models import unet
from cxr_jax.train import state as state_lib
from cxr_jax.train.method import Method

if TYPE_CHECKING:
    import tensorflow as tf


def align_view2(grid: jax.Array, *, k: jax.Array, flip: jax.Array) -> jax.Array:
    """Undoes `augment.rot_flip` on [N, g, g, D] grids: rotate back by k·90°, then by 180° where `flip`."""

    def one(x, k, flip):
        x = jax.lax.switch(k, [lambda x, i=i: jnp.rot90(x, -i, axes=(0, 1)) for i in range(4)], x)
        return jnp.where(flip > 0, x[::-1, ::-1], x)

    return jax.vmap(one)(grid, k, flip)


def cluster_perplexity(assignment: jax.Array) -> jax.Array:
    """exp(entropy) of the mean assignment over all pixels [..., K]: how many clusters are in use (1 to K).

    Logged each step to catch the clustering collapsing onto a few clusters, which the losses alone hide.
    """
    p = jnp.mean(assignment.reshape(-1, assignment.shape[-1]).astype(jnp.float32), axis=0)
    return jnp.exp(-jnp.sum(p * jnp.log(jnp.maximum(p, 1e-30))))


class LD(Method):
    """`ld_model.LDNet` trained with Adam on LD's losses (weights and stages in `config.loss`)."""

    key_metrics = ("loss", "patch", "region", "clusters_used")

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
        _check_landmarks(config.landmarks)
        dtype = jnp.bfloat16 if config.mixed_precision else jnp.float32
        self.model = ld_model.LDNet(m.embed_dim, m.num_clusters, tuple(m.layers), tuple(map(tuple, m.widths)),
                                    dtype, m.remat)
        self.schedule = optax.exponential_decay(config.optim.learning_rate, config.optim.halve_every, 0.5,
                                                staircase=True)
        self.tx = {"model": optax.adam(self.schedule)}
        if config.shape.weight > 0:
            self.critic = ld_model.ShapeDiscriminator(tuple(config.shape.critic_channels), config.shape.critic_slope)
            self.tx["critic"] = optax.adam(lambda step: self.schedule(step) * config.shape.critic_learning_rate)

    def train_data(self):
        """The images of `data.train` and every `data.extra_train` set, and the two-view augmentation."""
        specs = [self.config.data.train, *self.config.data.extra_train.values()]
        parts = [sources.images_only(sources.load(spec, image_size=self.config.image_size, seed=self.config.seed),
                                     spec.source) for spec in specs]
        if self.config.shape.weight <= 0:
            return sources.concatenate(parts), self.preprocess_train
        import tensorflow as tf  # Only where data is built (see `train.method`).

        masks = tf.constant(self.shape_masks())
        return sources.concatenate(parts), functools.partial(self.preprocess_train, shape_masks=masks)

    def shape_masks(self) -> np.ndarray:
        """The shape prior's real masks: `mask_<shape.structure>` of `data.shape_masks` as [M, S, S, 1] floats."""
        config = self.config
        spec = config.data.shape_masks
        data = sources.load(spec, image_size=config.image_size, seed=config.seed)
        masks = sources.with_masks(data, (config.shape.structure,), spec)["masks"]
        if not len(masks):
            raise sources.DataError(f"data.shape_masks ({spec.source!r}, {spec.path}) has no "
                                    f"mask_{config.shape.structure}")
        return masks.astype(np.float32)

    def preprocess_train(self, example, shape_masks: tf.Tensor | None = None):
        """Two views in [-1, 1] (the official Normalize(0.5, 0.5)), view 2's turn (k, flip) and mixup weight.

        Given the shape prior's masks [M, S, S, 1], also two augmented ones per image (`real_masks`).
        """
        import tensorflow as tf  # Only where data is built (see `train.method`).

        from cxr_jax.data import augment

        view_seed, mask_seed = tf.unstack(augment.split_seed(example["seed"], 2))
        views = augment.ld_views(augment.to_unit(example["image"]), view_seed, self.config.augment)
        out = {**views, "view1": views["view1"] * 2.0 - 1.0, "view2": views["view2"] * 2.0 - 1.0}
        if shape_masks is not None:
            out["real_masks"] = augment.ld_shape_masks(shape_masks, mask_seed, self.config.augment, num=2)
        return out

    def synthetic_batch(self, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Two random [-1, 1] views, view 2's turn, mixup weights and, with the shape prior, random masks."""
        rng = np.random.default_rng(seed)
        size = self.config.image_size
        batch = {f"view{i}": rng.uniform(-1.0, 1.0, (batch_size, size, size, 1)).astype(np.float32) for i in (1, 2)}
        batch.update(k=rng.integers(0, 4, batch_size, dtype=np.int32),
                     flip=rng.integers(0, 2, batch_size, dtype=np.int32),
                     mix=rng.uniform(*self.config.augment.mixup, batch_size).astype(np.float32))
        if self.config.shape.weight > 0:
            batch["real_masks"] = (rng.random((batch_size, 2, size, size, 1)) < 0.5).astype(np.float32)
        return batch

    def evaluate(self, state: state_lib.TrainState, mesh, outdir) -> dict[str, float]:
        """See `cxr_jax.methods.ld.evaluate` (imported here: training needs none of its plotting)."""
        from cxr_jax.methods.ld import evaluate

        return evaluate.evaluate(self, state, mesh, outdir)

    def samples(self, state: state_lib.TrainState, mesh) -> np.ndarray:
        """Input | embedding PCA as RGB | cluster map of data.eval's first images (`methods.ld.pictures`)."""
        from cxr_jax.methods.ld import pictures

        return pictures.samples(self, state, mesh)

    def init(self, rng: jax.Array, batch) -> state_lib.TrainState:
        """Parameters, BatchNorm statistics and the optimizer state."""
        images = batch["view1"] if "view1" in batch else batch["image"]
        variables = self.model.init(rng, images, train=False)
        params = {"model": variables["params"]}
        if "critic" in self.tx:
            params["critic"] = self.critic.init(jax.random.fold_in(rng, 1), images[:1, ..., :1])["params"]
        return state_lib.TrainState.create(params, self.tx, {"batch_stats": variables["batch_stats"]})

    def losses(self, outputs: dict[str, jax.Array], batch, stage2: jax.Array) -> tuple[jax.Array, dict]:
        """The weighted total and each term, from the network's outputs on [view1; view2; mixups].

        `stage2` is 1.0 from `loss.stage1_steps` on (region and entropy count), else 0.0.
        """
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
        total = (c.patch * terms["patch"] + c.mixup * terms["mixup"]
                 + stage2 * (c.region * terms["region"] + c.entropy * terms["entropy"]))
        terms["clusters_used"] = jax.lax.stop_gradient(cluster_perplexity(outputs["assignment"][:2 * n]))
        return total, {**terms, "stage": 1.0 + stage2}

    def train_step(self, state: state_lib.TrainState, batch):
        """One Adam step on the network's outputs for [view1; view2; mixups of view1 pairs]."""
        v1 = batch["view1"]
        h = v1.shape[0] // 2
        w = batch["mix"][:h, None, None, None].astype(v1.dtype)
        images = jnp.concatenate([v1, batch["view2"], w * v1[:h] + (1.0 - w) * v1[h:]])

        stage2 = (state.step >= self.config.loss.stage1_steps).astype(jnp.float32)

        def loss_fn(params):
            outputs, updates = self.model.apply({"params": params, **state.model_state}, images, train=True,
                                                mutable=["batch_stats"])
            loss, terms = self.losses(outputs, batch, stage2)
            fake = outputs["assignment"][:2 * v1.shape[0], ..., :1]  # Cluster channel 0 of both views.
            if "critic" in self.tx:
                terms["shape_g"] = losses.shape_generator(self.critic.apply({"params": state.params["critic"]}, fake))
                loss = loss + stage2 * self.config.shape.weight * terms["shape_g"]
            return loss, (terms, updates, jax.lax.stop_gradient(fake))

        (loss, (terms, updates, fake)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["model"])
        new_state = state.apply_gradients("model", grads, self.tx["model"])
        metrics = {"loss": loss, **terms, "learning_rate": self.schedule(state.step),
                   **state_lib.norms(state.params["model"], grads)}
        if "critic" in self.tx:
            new_state, critic_terms = self._critic_step(new_state, batch["real_masks"], fake, stage2)
            metrics.update(critic_terms)
            metrics["shape_area"] = jnp.mean(fake)
        return new_state.replace(step=state.step + 1, model_state=dict(updates)), metrics

    def _critic_step(self, state: state_lib.TrainState, real: jax.Array, fake: jax.Array, stage2: jax.Array):
        """One critic update on real masks [B, 2, S, S, 1] vs the network's channel 0; none in stage 1.

        Returns the new state and the metrics `shape_d` (the BCE) and, with `shape.r1` > 0, `shape_r1`.
        """
        real = real.reshape(fake.shape)
        maps = jnp.concatenate([real, fake])  # As many reals as fakes: one pass.
        r1 = self.config.shape.r1

        def loss_fn(params):
            critic = functools.partial(self.critic.apply, {"params": params})
            real_logits, fake_logits = jnp.split(critic(maps), 2)
            terms = {"shape_d": losses.shape_discriminator(real_logits=real_logits, fake_logits=fake_logits)}
            if r1 > 0:  # Each logit sees only its own map, so ∂Σ/∂x is per map.
                terms["shape_r1"] = losses.r1_penalty(jax.grad(lambda x: jnp.sum(critic(x)))(real))
            return terms["shape_d"] + 0.5 * r1 * terms.get("shape_r1", 0.0), terms

        (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["critic"])
        new = state.apply_gradients("critic", grads, self.tx["critic"])
        keep = functools.partial(jax.tree.map, lambda a, b: jnp.where(stage2 > 0, a, b))  # Adam's count too.
        return state.replace(params={**state.params, "critic": keep(new.params["critic"], state.params["critic"])},
                             opt_state={**state.opt_state, "critic": keep(new.opt_state["critic"],
                                                                          state.opt_state["critic"])}), terms

    def predict(self, state: state_lib.TrainState, batch) -> dict[str, jax.Array]:
        """Pixel embeddings [B, S, S, D] and cluster assignments [B, S, S, K] of eval images."""
        return self.model.apply({"params": state.params["model"], **state.model_state}, batch["image"])


def _check_landmarks(c: ml_collections.ConfigDict) -> None:
    """The one-shot search's settings (`methods/ld/landmarks.py`), checked before anything trains."""
    if c.align not in geometry.ALIGN_PARAMETERS:
        raise ConfigError(f"landmarks.align must be one of {sorted(geometry.ALIGN_PARAMETERS)}, got {c.align!r}")
    if not 0 < c.align_keep <= 1:
        raise ConfigError(f"landmarks.align_keep must be in (0, 1], got {c.align_keep}")
    for key in ("window", "local_window"):
        if c[key] and c[key] < 1:
            raise ConfigError(f"landmarks.{key} must be 0 (off) or a radius of at least 1 model pixel, got {c[key]}")
