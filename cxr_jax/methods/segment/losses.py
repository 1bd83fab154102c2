"""Segmentation losses: soft Dice and per-pixel binary cross-entropy, on independent sigmoid channels.

Dice is per example and per structure, smoothed by 1 (as the official LD code's `dice_loss`): a structure
absent from an image and predicted absent scores ≈ 1 instead of 0/0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def soft_dice(*, probs: jax.Array, masks: jax.Array, smooth: float = 1.0) -> jax.Array:
    """(2 Σ p·g + s) / (Σ p + Σ g + s) over the pixels of each example and channel: [B, C]."""
    p, g = probs.astype(jnp.float32), masks.astype(jnp.float32)
    overlap = jnp.sum(p * g, axis=(1, 2))
    return (2 * overlap + smooth) / (jnp.sum(p, axis=(1, 2)) + jnp.sum(g, axis=(1, 2)) + smooth)


def dice_bce(*, logits: jax.Array, masks: jax.Array, bce_weight: float) -> tuple[jax.Array, dict]:
    """Mean (1 − soft Dice) + `bce_weight` · mean BCE over a batch [B, H, W, C]; and both terms."""
    logits = logits.astype(jnp.float32)
    masks = masks.astype(jnp.float32)
    dice = 1.0 - soft_dice(probs=jax.nn.sigmoid(logits), masks=masks).mean()
    bce = optax.sigmoid_binary_cross_entropy(logits, masks).mean()
    return dice + bce_weight * bce, {"dice_loss": dice, "bce": bce}
