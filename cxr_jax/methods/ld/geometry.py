"""Where a landmark should be: the template's points moved onto a query's matches, and search windows.

Pure JAX, imported by the localiser and (for the config check) by training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ALIGN_PARAMETERS = {"none": 0, "similarity": 4, "affine": 6}  # Unknowns of each transform (2 per point).


def _design(xy: jax.Array, kind: str) -> jax.Array:
    """[2L, k] rows mapping a transform's k parameters to the moved points' x then y coordinates."""
    x, y = xy[:, 0], xy[:, 1]
    one, zero = jnp.ones_like(x), jnp.zeros_like(x)
    if kind == "similarity":  # x' = a x − b y + tx, y' = b x + a y + ty.
        cols = [(x, -y, one, zero), (y, x, zero, one)]
    elif kind == "affine":
        cols = [(x, y, one, zero, zero, zero), (zero, zero, zero, x, y, one)]
    else:
        raise ValueError(f"landmarks.align must be one of {sorted(ALIGN_PARAMETERS)}, got {kind!r}")
    return jnp.concatenate([jnp.stack(c, axis=1) for c in cols])


def fit_transform(source: jax.Array, target: jax.Array, *, kind: str, keep: float = 0.5,
                  iterations: int = 5) -> jax.Array:
    """`source` points [L, 2] moved by the `kind` transform that best maps them onto `target` [L, 2].

    Trimmed least squares: after a fit to all points, each refit uses only the `keep` fraction of points
    that the previous fit placed closest to their targets (wrong matches are far from any consistent
    transform). Coordinates are centred and scaled by the source's spread, so the solve is well conditioned.
    """
    centre, scale = source.mean(0), jnp.maximum(source.std(), 1e-6)
    a, b = _design((source - centre) / scale, kind), ((target - centre) / scale).T.reshape(-1)
    weights = jnp.ones(len(source))

    def moved(w):
        ww = jnp.concatenate([w, w])[:, None]
        params = jnp.linalg.solve(a.T @ (ww * a) + 1e-6 * jnp.eye(a.shape[1]), a.T @ (ww[:, 0] * b))
        return (a @ params).reshape(2, -1).T * scale + centre

    for _ in range(iterations):
        residual = jnp.linalg.norm(moved(weights) - target, axis=1)
        weights = (residual <= jnp.quantile(residual, keep)).astype(source.dtype)
    return moved(weights)


def within(scores: jax.Array, centres: jax.Array, radius: float) -> jax.Array:
    """Score maps [B, L, S, S] with every pixel farther than `radius` from its centre [B, L, 2] at −1e9.

    Centres are clamped to the map first, so each window keeps at least its nearest pixel (`radius` ≥ 1).
    """
    s = scores.shape[-1]
    grid = jnp.arange(s, dtype=jnp.float32)
    centres = jnp.clip(centres, 0, s - 1)
    dx = grid[None, None, None, :] - centres[..., 0, None, None]
    dy = grid[None, None, :, None] - centres[..., 1, None, None]
    return jnp.where(dx**2 + dy**2 <= radius**2, scores, -1e9)
