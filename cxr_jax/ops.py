"""Small numerical building blocks shared by models, losses and evaluation."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Rows scaled to unit L2 norm (as torch.nn.functional.normalize), with a finite gradient at a zero row.

    `x / max(‖x‖, eps)` would give NaN there: the norm's derivative at 0 is 0/0, and the maximum's zero weight
    does not cancel a NaN (e.g. LD's region embedding of a cluster whose assignments underflow to 0).
    """
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps * eps))


def _row_width(x: jax.Array, max_width: int = 4096) -> int:
    """How many pixels of one example go in a row: the largest divisor k of the spatial size with k·C ≤ max."""
    spatial, channels = math.prod(x.shape[1:-1]), x.shape[-1]
    return max(k for k in range(1, min(spatial, max(max_width // channels, 1)) + 1) if spatial % k == 0)


def channel_sum(x: jax.Array, *, per_example: bool = False) -> jax.Array:
    """Sum of [N, ..., C] over all axes but the channels (and the first, with `per_example`): [C] or [N, C].

    Summed as rows of a few thousand values, then those rows: XLA:CPU reduces an NHWC activation over its
    leading axes directly 20× slower (it splits the long reduction into reduce-windows). Rows never cross
    examples, so a batch sharded over devices stays sharded. Low-precision inputs are summed in float32.
    """
    k, c = _row_width(x), x.shape[-1]
    wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if per_example:
        total = wide.reshape(x.shape[0], -1, k * c).sum(axis=1).reshape(x.shape[0], k, c).sum(axis=1)
    else:  # One flat [rows, k·C] sum: XLA folds a batch-then-rows sum back into the slow reduction.
        total = wide.reshape(-1, k * c).sum(axis=0).reshape(k, c).sum(axis=0)
    return total.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def channel_broadcast(v: jax.Array, shape: tuple[int, ...], per_example: bool = False) -> jax.Array:
    """[C] (or [N, C] with `per_example`) broadcast to `shape` [N, ..., C]; its gradient is `channel_sum`.

    Written out, autodiff would reduce the cotangent over the leading axes in XLA:CPU's slow way.
    """
    return jnp.broadcast_to(v.reshape(v.shape[:-1] + (1,) * (len(shape) - v.ndim) + v.shape[-1:]), shape)


def _broadcast_fwd(v, shape, per_example):
    return channel_broadcast(v, shape, per_example), None


def _broadcast_bwd(shape, per_example, _, g):
    return (channel_sum(g, per_example=per_example),)


channel_broadcast.defvjp(_broadcast_fwd, _broadcast_bwd)


@jax.custom_vjp
def relu(x: jax.Array) -> jax.Array:
    """`jax.nn.relu`, whose gradient is taken once, from the output.

    Autodiff's gradient re-derives the mask from the input, which XLA:CPU recomputes (a normalisation, an add)
    inside every consumer of the gradient; here the masked gradient is computed once and kept.
    """
    return jnp.maximum(x, 0)


def _relu_fwd(x):
    y = jnp.maximum(x, 0)
    return y, y


def _relu_bwd(y, g):
    dx = jnp.where(y > 0, g, jnp.zeros_like(g))  # 0 at x = 0, as jax.nn.relu.
    return (jax.lax.optimization_barrier(dx) if jax.default_backend() == "cpu" else dx,)


relu.defvjp(_relu_fwd, _relu_bwd)
