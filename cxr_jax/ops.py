"""Small numerical building blocks shared by models, losses and evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Rows scaled to unit L2 norm (as torch.nn.functional.normalize), with a finite gradient at a zero row.

    `x / max(‖x‖, eps)` would give NaN there: the norm's derivative at 0 is 0/0, and the maximum's zero weight
    does not cancel a NaN (e.g. LD's region embedding of a cluster whose assignments underflow to 0).
    """
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps * eps))
