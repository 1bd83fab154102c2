"""DGM training: the discriminator and the generator updated in one jitted step.

Order within a step (as MUNIT's `dis_update` then `gen_update`):
  1. the generator runs forward once on the batch, keeping its VJP;
  2. the discriminator takes one Adam step on L_D: the batch's synthesised normals y′ (gradient stopped) as
     fakes and the batch's real normal images as reals;
  3. the generator takes one Adam step on L_G scored by the UPDATED discriminator; its gradient is the VJP of
     step 1 applied to ∂L_G/∂(y′, r, z″), so the generator's forward pass is not repeated;
  4. optionally, the generator's exponential moving average (`model_state['ema']`) moves towards it;
  5. the baseline autoencoder (`model.ae.enabled`) takes one Adam step on the batch's normal images, so the
     same command trains the comparison for every evaluation number (`ae_…` metrics).
Every batch holds `data.normal_fraction` normal images (a fixed composition, see `pipeline.train_dataset`), so
the discriminator always has real normals.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cxr_jax.config import ConfigError
from cxr_jax.data import sources
from cxr_jax.methods.dgm import losses, saliency
from cxr_jax.methods.dgm import model as models
from cxr_jax.train import state as state_lib
from cxr_jax.train.method import Method


class DGM(Method):
    """Generator (E_G, E_F, D_G, D_F, D_J) and multi-scale discriminator, each with its own Adam."""

    key_metrics = ("g_loss", "d_loss", "recon_sum", "residue_normal")  # Fidelity, and residues on normals.

    def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None):
        del mesh  # Per-example losses and batch means: GSPMD shards the step without explicit collectives.
        self.config = config
        dtype = jnp.bfloat16 if config.mixed_precision else jnp.float32
        g, d = config.model.generator, config.model.discriminator
        smallest = models.min_image_size(n_layers=d.n_layers, num_scales=d.num_scales)
        if config.image_size < smallest:
            raise ConfigError(f"image_size={config.image_size} is too small for model.discriminator.n_layers="
                              f"{d.n_layers} at num_scales={d.num_scales}: needs at least {smallest}")
        if config.image_size % 2**g.n_down:
            raise ConfigError(f"image_size={config.image_size} must be divisible by 2^model.generator.n_down")
        self.generator = models.Generator(g.dim, g.n_down, g.n_res, g.mlp_dim, g.residue_res_norm, dtype, g.remat)
        self.discriminator = models.MultiScaleDiscriminator(d.dim, d.n_layers, d.num_scales, dtype, d.init_std,
                                                            d.input_blur)
        ae = config.model.ae
        self.autoencoder = models.AutoEncoder(ae.dim, ae.n_down, ae.latent, dtype) if ae.enabled else None
        if ae.enabled and config.image_size % 2**ae.n_down:
            raise ConfigError(f"image_size={config.image_size} must be divisible by 2^model.ae.n_down")
        self.schedule = _schedule(config.optim)
        d_schedule = _scaled(self.schedule, config.optim.d_lr_scale)
        self.tx = {"g": _adam(config.optim, self.schedule), "d": _adam(config.optim, d_schedule)}
        if ae.enabled:
            self.tx["ae"] = _adam(config.optim, self.schedule)
        self.batch_composition = normal_composition(config.batch_size, config.data.normal_fraction)
        if config.saliency.source not in saliency.SOURCES:
            raise ConfigError(f"saliency.source={config.saliency.source!r}; expected one of {saliency.SOURCES}")
        if config.loss.fakes not in ("all", "abnormal"):
            raise ConfigError(f"loss.fakes={config.loss.fakes!r}; expected 'all' or 'abnormal'")

    # --- Data ------------------------------------------------------------------------------------------------

    def train_data(self):
        """Labelled images of `data.train` and `data.extra_train`'s sets, stratified by label, and the preprocessing."""
        specs = [self.config.data.train, *self.config.data.extra_train.values()]
        examples = sources.concatenate([sources.labelled_images(
            sources.load(spec, image_size=self.config.image_size, seed=self.config.seed), spec.source)
            for spec in specs])
        return {**examples, "stratum": examples["label"]}, self.preprocess_train

    def preprocess_train(self, example):
        """A random shift (zero padding), then [-1, 1] floats."""
        from cxr_jax.data import augment  # TensorFlow: only where data is built (see `train.method`).

        image = augment.to_float(example["image"])
        image = augment.random_shift(image, example["seed"], self.config.augment.max_shift)
        return {"image": image, "label": example["label"]}

    def synthetic_batch(self, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Random [-1, 1] images and labels, `batch_composition`'s normals (label 0) among them."""
        rng = np.random.default_rng(seed)
        size = self.config.image_size
        normals, _ = normal_composition(batch_size, self.config.data.normal_fraction)
        return {"image": rng.uniform(-1.0, 1.0, (batch_size, size, size, 1)).astype(np.float32),
                "label": rng.permutation((np.arange(batch_size) >= normals).astype(np.int32))}

    # --- Model -----------------------------------------------------------------------------------------------

    def evaluate(self, state: state_lib.TrainState, mesh, outdir) -> dict[str, float]:
        """See `cxr_jax.methods.dgm.evaluate` (imported here: training needs none of its plotting)."""
        from cxr_jax.methods.dgm import evaluate

        return evaluate.evaluate(self, state, mesh, outdir)

    def samples(self, state: state_lib.TrainState, mesh) -> np.ndarray:
        """Input | synthesised normal | residue | saliency of data.eval's first images (`methods.dgm.pictures`)."""
        from cxr_jax.methods.dgm import pictures

        return pictures.samples(self, state, mesh)

    def init(self, rng: jax.Array, batch) -> state_lib.TrainState:
        """Both networks' parameters and optimizer states (and the generator EMA, if enabled)."""
        g_rng, d_rng, ae_rng = jax.random.split(rng, 3)
        params = {"g": self.generator.init(g_rng, batch["image"])["params"],
                  "d": self.discriminator.init(d_rng, batch["image"])["params"]}
        if self.autoencoder is not None:
            params["ae"] = self.autoencoder.init(ae_rng, batch["image"])["params"]
        model_state = {"ema": params["g"]} if self.config.optim.ema_decay else {}
        return state_lib.TrainState.create(params, self.tx, model_state)

    def train_step(self, state: state_lib.TrainState, batch):
        """One discriminator step, then one generator step against the updated discriminator."""
        z = batch["image"]
        is_normal = (batch["label"] == 0).astype(jnp.float32)
        out, generator_vjp = jax.vjp(lambda p: self.generator.apply({"params": p}, z), state.params["g"])

        d_loss, d_grads = jax.value_and_grad(self.discriminator_loss)(
            state.params["d"], fake=jax.lax.stop_gradient(out["normal"]), real=z, is_normal=is_normal)
        state = state.apply_gradients("d", d_grads, self.tx["d"])

        (g_loss, terms), out_grads = jax.value_and_grad(self.generator_loss, has_aux=True)(
            out, d_params=state.params["d"], image=z, is_normal=is_normal)
        (g_grads,) = generator_vjp(out_grads)
        new_state = state.apply_gradients("g", g_grads, self.tx["g"])

        decay = self.config.optim.ema_decay
        if decay:
            ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.model_state["ema"],
                               new_state.params["g"])
            new_state = new_state.replace(model_state={**state.model_state, "ema": ema})
        g_norms, d_norms = state_lib.norms(state.params["g"], g_grads), state_lib.norms(state.params["d"], d_grads)
        metrics = {"g_loss": g_loss, "d_loss": d_loss, **terms,
                   "learning_rate": self.schedule(state.step),
                   **{f"g_{k}": v for k, v in g_norms.items()}, **{f"d_{k}": v for k, v in d_norms.items()}}
        if self.autoencoder is not None:
            ae_loss, ae_grads = jax.value_and_grad(self.autoencoder_loss)(state.params["ae"], image=z,
                                                                         is_normal=is_normal)
            new_state = new_state.apply_gradients("ae", ae_grads, self.tx["ae"])
            metrics["ae_recon"] = ae_loss
        return new_state.replace(step=state.step + 1), metrics

    def autoencoder_loss(self, ae_params, *, image: jax.Array, is_normal: jax.Array) -> jax.Array:
        """The baseline's L1 reconstruction loss over the batch's normal images."""
        recon = self.autoencoder.apply({"params": ae_params}, image)
        return losses.autoencoder_loss(recon=recon, image=image, is_normal=is_normal)

    def discriminator_loss(self, d_params, *, fake: jax.Array, real: jax.Array, is_normal: jax.Array) -> jax.Array:
        """L_D with fakes and reals scored in one pass of the discriminator."""
        scores = self.discriminator.apply({"params": d_params}, jnp.concatenate([fake, real]))
        n = fake.shape[0]
        return losses.discriminator_loss(fake_scores=[s[:n] for s in scores], real_scores=[s[n:] for s in scores],
                                         real_weight=is_normal, fake_weight=self._fake_weight(is_normal))

    def generator_loss(self, out: dict[str, jax.Array], *, d_params, image: jax.Array, is_normal: jax.Array):
        """L_G of the generator's outputs `out` ({'normal', 'residue', 'recon'}) and its terms."""
        w = self.config.loss
        fake_scores = self.discriminator.apply({"params": d_params}, out["normal"])
        return losses.generator_loss(image=image, normal=out["normal"], residue=out["residue"],
                                     recon=out["recon"], fake_scores=fake_scores, is_normal=is_normal,
                                     adversarial_weight=w.adversarial, reconstruction_weight=w.reconstruction,
                                     tv_weight=w.tv, residue_weight=w.reconstruction * w.residue_normal_scale,
                                     fake_weight=self._fake_weight(is_normal))

    def _fake_weight(self, is_normal: jax.Array) -> jax.Array | None:
        """Which inputs' y′ are the discriminator's fakes (`loss.fakes`): None for all, else the abnormal ones."""
        return None if self.config.loss.fakes == "all" else 1.0 - is_normal

    def generator_params(self, state: state_lib.TrainState):
        """The parameters inference uses: the EMA when it is kept, else the trained ones."""
        return state.model_state.get("ema", state.params["g"])

    def decompose(self, state: state_lib.TrainState, batch) -> dict[str, jax.Array]:
        """{'normal': y′, 'residue': r, 'difference': z − y′} of `batch['image']` [B, H, W, 1] in [-1, 1].

        r is the paper's residue; z − y′ is what the synthesised normal misses, equal to r where ℓ_R¹ is met.
        """
        out = self.generator.apply({"params": self.generator_params(state)}, batch["image"],
                                   method=models.Generator.decompose)
        return {**out, "difference": batch["image"].astype(jnp.float32) - out["normal"]}

    def anomaly_maps(self, state: state_lib.TrainState, batch) -> dict[str, jax.Array]:
        """`decompose`'s outputs and, with the baseline, 'ae_residue' = z − AE(z) (signed like r), in one pass."""
        out = self.decompose(state, batch)
        if self.autoencoder is not None:
            z = batch["image"]
            out["ae_residue"] = z.astype(jnp.float32) - self.autoencoder.apply({"params": state.params["ae"]}, z)
        return out


def normal_composition(batch_size: int, normal_fraction: float) -> tuple[int, int]:
    """(normal rows, abnormal rows) of each batch: at least one normal, for the discriminator's reals."""
    if not 0.0 < normal_fraction <= 1.0:
        raise ConfigError(f"data.normal_fraction={normal_fraction} must be in (0, 1]: the discriminator needs "
                          "real normal images in every batch")
    normals = max(1, round(normal_fraction * batch_size))
    return normals, batch_size - normals


def _schedule(optim: ml_collections.ConfigDict) -> optax.Schedule:
    """MUNIT's step policy: the learning rate halves every `optim.decay_every` steps (0: constant)."""
    if not optim.decay_every:
        return optax.constant_schedule(optim.learning_rate)
    return optax.exponential_decay(optim.learning_rate, optim.decay_every, optim.decay_rate, staircase=True)


def _scaled(schedule: optax.Schedule, factor: float) -> optax.Schedule:
    """`schedule` × `factor` (the discriminator's rate relative to the generator's)."""
    return schedule if factor == 1 else lambda step: factor * schedule(step)


def _adam(optim: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Adam(β1, β2) with PyTorch-style L2 weight decay (added to the gradient before Adam's scaling)."""
    return optax.chain(optax.add_decayed_weights(optim.weight_decay),
                       optax.adam(schedule, b1=optim.beta1, b2=optim.beta2))
