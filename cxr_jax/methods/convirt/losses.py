"""ConVIRT's bidirectional InfoNCE over the global batch.

For a batch of N pairs with L2-normalised embeddings v_i (image) and u_i (text),

    ℓ_i^(v→u) = −log softmax_k(⟨v_i, u_k⟩/τ)_i,   ℓ_i^(u→v) = −log softmax_k(⟨u_i, v_k⟩/τ)_i,
    L = (1/N) Σ_i [λ ℓ_i^(v→u) + (1 − λ) ℓ_i^(u→v)],   τ = 0.1, λ = 0.75 in the paper.

Inside `shard_map` (`axis_name` set) each device holds its rows of the batch, gathers the other side from every
device and host, and scores its rows against all N: the negatives are the global batch, and the gradient flows
back through the gather (its transpose is a reduce-scatter) to the device that owns each embedding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cxr_jax.ops import l2_normalize


def info_nce(*, image: jax.Array, text: jax.Array, temperature: jax.Array | float, image_weight: float = 0.75,
             axis_name: str | None = None) -> jax.Array:
    """The mean bidirectional loss L above.

    Args:
      image: [n, d] image embeddings (this device's rows when `axis_name` is set), any scale.
      text: [n, d] the paired text embeddings.
      temperature: τ, a scalar (fixed or learned).
      image_weight: λ, the weight of the image→text direction.
      axis_name: the mesh axis the batch is split over, inside `shard_map`; None for a whole batch.

    Returns:
      A scalar: the mean over the global batch (identical on every device).
    """
    image = l2_normalize(image.astype(jnp.float32))
    text = l2_normalize(text.astype(jnp.float32))
    n = image.shape[0]
    if axis_name is None:
        all_image, all_text, offset = image, text, 0
    else:
        all_image = jax.lax.all_gather(image, axis_name, tiled=True)
        all_text = jax.lax.all_gather(text, axis_name, tiled=True)
        offset = jax.lax.axis_index(axis_name) * n
    rows = jnp.arange(n)
    targets = offset + rows
    image_to_text = jax.nn.log_softmax(image @ all_text.T / temperature, axis=-1)[rows, targets]
    text_to_image = jax.nn.log_softmax(text @ all_image.T / temperature, axis=-1)[rows, targets]
    total = -jnp.sum(image_weight * image_to_text + (1.0 - image_weight) * text_to_image)
    count = n
    if axis_name is not None:
        total, count = jax.lax.psum(total, axis_name), jax.lax.psum(count, axis_name)
    return total / count


def retrieval_accuracy(*, image: jax.Array, text: jax.Array) -> jax.Array:
    """Fraction of images whose own text is their nearest text in the (whole) batch: a training-time gauge."""
    scores = l2_normalize(image.astype(jnp.float32)) @ l2_normalize(text.astype(jnp.float32)).T
    return jnp.mean(jnp.argmax(scores, axis=1) == jnp.arange(image.shape[0]))
