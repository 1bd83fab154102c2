"""DGM's losses (Tang et al. 2021).

With z an input CXR, y′ = D_G(E_G(z)), r = D_F(E_F(z)) and z″ = D_J(E_G(z), E_F(z)):

  ℓ_A    = Σ_scales ½ E[(D(y′) − 1)²]                        the generator's LSGAN term
  ℓ_R¹   = ‖y′ + r − z‖₁,   ℓ_R² = ‖z″ − z‖₁                   reconstruction
  ℓ_R³   = ‖r‖₁ on normal inputs, 0 on abnormal ones           a normal image has no residue
  ℓ_TV   = Σ |y′_{i+1,j} − y′_{i,j}| + |y′_{i,j+1} − y′_{i,j}|   smoothness of the synthesised normal
  L_G    = λ_A ℓ_A + λ_R (ℓ_R¹ + ℓ_R² + ℓ_R³) + λ_TV ℓ_TV      (λ_A = λ_R = 10, λ_TV = 1 in the paper)
  L_D    = Σ_scales ½ E[D(y′)²] + ½ E[(D(y) − 1)²]             y: real NORMAL images only

Norms are means, not sums: ‖x‖₁ is the mean |x| over pixels, and ℓ_TV is the sum of absolute neighbour
differences divided by the number of pixels. The paper's implementation builds on MUNIT, whose losses are
`torch.mean(torch.abs(...))`; with sums the weights λ would change meaning with the image size (at 256² a
summed ℓ_TV is 65,536 times the mean and would drown the adversarial term). Every E[·] is a mean over the
batch; ℓ_R³ is averaged over the whole batch with zeros for abnormal inputs (E_z[1{z normal} ‖r‖₁]), and the
real term of L_D over the batch's normals only (the expectation over real normals). Each discriminator scale
contributes the mean over its patch scores, summed over scales as in MUNIT.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def _per_example_mean(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32).reshape(x.shape[0], -1).mean(axis=1)


def _masked_mean(values: jax.Array, weight: jax.Array) -> jax.Array:
    """Σ w v / Σ w (0 when no example has weight)."""
    weight = weight.astype(jnp.float32)
    return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def _fake_mean(values: jax.Array, weight: jax.Array | None) -> jax.Array:
    """The mean over all fakes, or over the weighted ones (`loss.fakes=abnormal`)."""
    if weight is None:
        return jnp.mean(values)
    return _masked_mean(_per_example_mean(values), weight)


def generator_adversarial(*, fake_scores: Sequence[jax.Array], fake_weight: jax.Array | None = None) -> jax.Array:
    """ℓ_A: Σ over scales of ½ mean((D(y′) − 1)²), over the inputs `fake_weight` selects (None: all)."""
    return sum(0.5 * _fake_mean((s.astype(jnp.float32) - 1.0) ** 2, fake_weight) for s in fake_scores)


def discriminator_loss(*, fake_scores: Sequence[jax.Array], real_scores: Sequence[jax.Array],
                       real_weight: jax.Array, fake_weight: jax.Array | None = None) -> jax.Array:
    """L_D: Σ over scales of ½ mean(D(y′)²) + ½ mean over weighted real images of (D(y) − 1)².

    Args:
      fake_scores: per scale, [B, h, w, 1] scores of the synthesised normals y′ (all inputs).
      real_scores: per scale, the scores of the real batch.
      real_weight: [B], 1 for the real images that count as real normals, 0 for the rest.
      fake_weight: [B], 1 for the inputs whose y′ count as fakes; None: all (the paper's wording).
    """
    loss = 0.0
    for fake, real in zip(fake_scores, real_scores, strict=True):
        real_term = _per_example_mean((real.astype(jnp.float32) - 1.0) ** 2)
        fake_term = _fake_mean(fake.astype(jnp.float32) ** 2, fake_weight)
        loss = loss + 0.5 * fake_term + 0.5 * _masked_mean(real_term, real_weight)
    return loss


def l1(*, prediction: jax.Array, target: jax.Array) -> jax.Array:
    """Mean absolute difference over pixels and batch."""
    return jnp.mean(jnp.abs(prediction.astype(jnp.float32) - target.astype(jnp.float32)))


def residue_on_normals(*, residue: jax.Array, is_normal: jax.Array) -> jax.Array:
    """ℓ_R³: the batch mean of mean |r| per example, counting abnormal examples as 0."""
    return jnp.mean(_per_example_mean(jnp.abs(residue)) * is_normal.astype(jnp.float32))


def autoencoder_loss(*, recon: jax.Array, image: jax.Array, is_normal: jax.Array) -> jax.Array:
    """The baseline's ‖AE(z) − z‖₁ (mean |·| per image), averaged over the batch's normal images only."""
    error = _per_example_mean(jnp.abs(recon.astype(jnp.float32) - image.astype(jnp.float32)))
    return _masked_mean(error, is_normal)


def total_variation(*, images: jax.Array) -> jax.Array:
    """ℓ_TV of [B, H, W, C] images: Σ |vertical| + |horizontal| neighbour differences / (B·H·W·C)."""
    x = images.astype(jnp.float32)
    vertical = jnp.sum(jnp.abs(x[:, 1:] - x[:, :-1]))
    horizontal = jnp.sum(jnp.abs(x[:, :, 1:] - x[:, :, :-1]))
    return (vertical + horizontal) / x.size


def generator_loss(*, image: jax.Array, normal: jax.Array, residue: jax.Array, recon: jax.Array,
                   fake_scores: Sequence[jax.Array], is_normal: jax.Array, adversarial_weight: float,
                   reconstruction_weight: float, tv_weight: float,
                   residue_weight: float | None = None,
                   fake_weight: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L_G and its terms.

    Args:
      image: z, [B, H, W, 1] inputs in [-1, 1].
      normal: y′, the synthesised normals.
      residue: r, the residue maps.
      recon: z″, D_J's reconstructions.
      fake_scores: the discriminator's score maps of y′, one per scale.
      is_normal: [B], 1 for normal inputs.
      adversarial_weight: λ_A.
      reconstruction_weight: λ_R.
      tv_weight: λ_TV.
      residue_weight: the weight of ℓ_R³; None: λ_R, as in the paper (a separate weight is for ablations).
      fake_weight: [B], the inputs whose y′ ℓ_A scores; None: all.

    Returns:
      (L_G, {'adversarial', 'recon_sum', 'recon_joint', 'residue_normal', 'tv'}).
    """
    terms = {
        "adversarial": generator_adversarial(fake_scores=fake_scores, fake_weight=fake_weight),
        "recon_sum": l1(prediction=normal + residue, target=image),
        "recon_joint": l1(prediction=recon, target=image),
        "residue_normal": residue_on_normals(residue=residue, is_normal=is_normal),
        "tv": total_variation(images=normal),
    }
    residue_weight = reconstruction_weight if residue_weight is None else residue_weight
    total = (adversarial_weight * terms["adversarial"]
             + reconstruction_weight * (terms["recon_sum"] + terms["recon_joint"])
             + residue_weight * terms["residue_normal"] + tv_weight * terms["tv"])
    return total, terms
