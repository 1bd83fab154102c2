"""LD's losses, as the official code (HuaiChen-1994/LDLearning) defines them.

Notation: Z [N, H, W, D] unit pixel embeddings, A [N, H, W, K] cluster assignments (sum 1 over K).

- Patch discrimination: Z average-pooled to a g×g grid and rescaled to unit length; each patch's positive is
  the same patch in the image's other view, every other patch of the batch (either view) is a negative.
  The criterion is the invariance-spreading loss of Ye et al. (CVPR 2019) that the official `BatchCriterion`
  implements: with s_ij = x_i·sg(x_j)/T and P_ij = exp(s_ij) / Σ_{l≠i} exp(s_il),
      L = −(1/M) Σ_i [log P_{i,pos(i)} + Σ_{j∉{i,pos(i)}} log(1 − P_ij)]
  over all M rows; gradients reach only the query side (sg = stop-gradient on the keys).
- Mixup: the same criterion between the patches of a mixed image w·x₁ + (1−w)·x₂ and the (stopped) unit
  mix of the two images' patch features w·p₁ + (1−w)·p₂.
- Region discrimination: region embeddings r_nk = unit(mean_p A_nkp Z_np), batch centres c_k = unit(mean_n
  r_nk), and a softmax over centres at τ = 0.2: L = −mean_{n,k} log softmax_j(r_nk·c_j/τ)_k.
- Entropy: the mean binary entropy (bits) of every assignment A_nkp, pushing each towards 0 or 1.
- Shape prior (the official retinal `step2_train_with_shape_prior`): a critic D tells real masks from cluster
  channel 0; binary cross-entropy on D's logits, the generator's towards "real", D's over reals and fakes.

Means, not sums, everywhere (as the official code), so the weights 1, 1, 10, 0.1 keep their meaning at any
batch, grid or image size.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from cxr_jax.ops import l2_normalize


def patch_features(embedding: jax.Array, *, grid: int) -> jax.Array:
    """[N, H, W, D] → unit [N, grid, grid, D] means over grid×grid equal windows (H, W divisible by grid)."""
    n, h, w, d = embedding.shape
    if h % grid or w % grid:
        raise ValueError(f"a {h}×{w} map does not split into a {grid}×{grid} grid of equal patches")
    pooled = embedding.astype(jnp.float32).reshape(n, grid, h // grid, grid, w // grid, d).mean(axis=(2, 4))
    return l2_normalize(pooled)


def invariance_spreading(rows: jax.Array, *, temperature: float) -> jax.Array:
    """The criterion above for [M, D] unit rows whose positives are i ↔ i ± M/2 (first half ↔ second half)."""
    m = rows.shape[0]
    rows = rows.astype(jnp.float32)
    scores = rows @ jax.lax.stop_gradient(rows).T / temperature
    self_mask = jnp.eye(m, dtype=bool)
    log_p = scores - jax.nn.logsumexp(jnp.where(self_mask, -jnp.inf, scores), axis=1, keepdims=True)
    positive = jnp.roll(jnp.eye(m, dtype=bool), m // 2, axis=1)
    log_pos = jnp.sum(jnp.where(positive, log_p, 0.0), axis=1)
    log_not = jnp.log1p(-jnp.exp(jnp.minimum(log_p, -1e-7)))  # log(1 − P), P < 1 kept finite.
    negatives = jnp.sum(jnp.where(self_mask | positive, 0.0, log_not), axis=1)
    return -jnp.mean(log_pos + negatives)


def patch_discrimination(*, view1: jax.Array, view2: jax.Array, temperature: float = 0.1) -> jax.Array:
    """Patches [N, g, g, D] of two views, aligned (view2's grid already un-rotated): patch i ↔ same patch."""
    d = view1.shape[-1]
    return invariance_spreading(jnp.concatenate([view1.reshape(-1, d), view2.reshape(-1, d)]),
                                temperature=temperature)


def mixup(*, mixed: jax.Array, first: jax.Array, second: jax.Array, weight: jax.Array,
          temperature: float = 0.1) -> jax.Array:
    """Patches [N, g, g, D] of mixed images vs the stopped unit mix of their sources' patches (weight [N])."""
    w = weight.astype(jnp.float32)[:, None, None, None]
    target = jax.lax.stop_gradient(l2_normalize(w * first + (1.0 - w) * second))
    d = mixed.shape[-1]
    return invariance_spreading(jnp.concatenate([mixed.reshape(-1, d), target.reshape(-1, d)]),
                                temperature=temperature)


def region_embeddings(*, embedding: jax.Array, assignment: jax.Array) -> jax.Array:
    """r_nk = unit(mean_p A_nkp Z_np): [N, H, W, D], [N, H, W, K] → [N, K, D]."""
    n, h, w, _ = embedding.shape
    summed = jnp.einsum("nhwk,nhwd->nkd", assignment.astype(jnp.float32), embedding.astype(jnp.float32))
    return l2_normalize(summed / (h * w))


def region_discrimination(regions: jax.Array, *, temperature: float = 0.2) -> jax.Array:
    """Each region [N, K, D] against the K batch centres: cross-entropy towards its own cluster's centre."""
    centres = l2_normalize(jnp.mean(regions, axis=0))
    logits = jnp.einsum("nkd,jd->nkj", regions, centres) / temperature
    own = jnp.diagonal(jax.nn.log_softmax(logits, axis=-1), axis1=1, axis2=2)  # [N, K]
    return -jnp.mean(own)


def binary_entropy(assignment: jax.Array) -> jax.Array:
    """Mean over all entries of −a log₂ a − (1 − a) log₂(1 − a) (the official `loss_entropy`).

    a is clipped to [0, 1] (after the L1 normalisation a dominant cluster can round to 1 + 2⁻²³), and the logs'
    arguments are floored with `maximum`, not the official `+ 1e-30`: under jit XLA folds (1 − a) + 1e-30 into
    (1 + 1e-30) − a = 1 − a, so at a = 1 the term was 0 · log 0 = NaN (the shape-prior run's NaN at step 746).
    """
    a = assignment.astype(jnp.float32)
    return _mean_entropy(a if a.ndim > 1 else a.reshape(1, -1))


@jax.custom_vjp
def _mean_entropy(rows: jax.Array) -> jax.Array:
    """The mean entropy of [R, ...] entries, a row (an image) at a time."""
    return jnp.mean(jax.lax.map(_row_entropy, rows)) / rows[0].size


def _row_entropy(a: jax.Array) -> jax.Array:
    c = jnp.clip(a, 0.0, 1.0)
    return jnp.sum(-c * _log2_floored(c) - (1.0 - c) * _log2_floored(1.0 - c))


def _mean_entropy_fwd(rows):
    return _mean_entropy(rows), rows


def _mean_entropy_bwd(rows, g):
    """The gradient from the entries alone, a row at a time.

    XLA CPU kept ~8 batch-sized intermediates of autodiff's elementwise backward alive together (a step plan
    of 9.0 GB at 448 px, batch 8; 6.3 GB with this).

    It is autodiff's of the floored formula: log₂(1 − a) − log₂ a, plus ±1/ln 2 from a · (log₂ a)′ and
    (1 − a) · (log₂(1 − a))′ where a floor does not hold; zero outside [0, 1] (the clip). At a = 0 or 1
    exactly it takes the inner slope whole (autodiff's clip would halve it there: a tie of min/max).
    """
    def row(a):
        c = jnp.clip(a, 0.0, 1.0)
        slope = (_log2_floored(1.0 - c) - _log2_floored(c)
                 + ((1.0 - c > 1e-30).astype(a.dtype) - (c > 1e-30).astype(a.dtype)) / math.log(2.0))
        return jnp.where((a >= 0.0) & (a <= 1.0), slope, 0.0) * (g / rows.size)

    return (jax.lax.map(row, rows),)


_mean_entropy.defvjp(_mean_entropy_fwd, _mean_entropy_bwd)


def _log2_floored(x: jax.Array) -> jax.Array:
    """log₂ max(x, 1e-30): finite at 0, with a zero gradient below the floor (so 0 · log₂ 0 terms add 0)."""
    return jnp.log2(jnp.maximum(x, 1e-30))


def shape_generator(fake_logits: jax.Array) -> jax.Array:
    """−mean log σ(D(fake)): the clustering is rewarded when D takes its channel 0 for a real mask."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(fake_logits, jnp.ones_like(fake_logits)))


def r1_penalty(real_grads: jax.Array) -> jax.Array:
    """Mean over the real maps of ‖∂D(x)/∂x‖² (Mescheder et al. 2018's R1; the critic adds γ/2 of it).

    It keeps the critic smooth around real masks. Without it the shape prior's critic won outright and
    cluster channel 0 emptied, which a saturated sigmoid never leaves.
    """
    g = real_grads.astype(jnp.float32).reshape(real_grads.shape[0], -1)
    return jnp.mean(jnp.sum(g * g, axis=1))


def shape_discriminator(*, real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """Binary cross-entropy averaged over the reals (label 1) and fakes (label 0) together, as the official."""
    logits = jnp.concatenate([real_logits, fake_logits])
    labels = jnp.concatenate([jnp.ones_like(real_logits), jnp.zeros_like(fake_logits)])
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))
