"""BERT text encoder in the Hugging Face layout (post-LN, exact GELU, learned positions, token types).

Submodule names follow `transformers.BertModel` closely so `cxr_jax.weights.load_bert` maps a checkpoint
one-to-one. `frozen_layers` (with `freeze_embeddings`) stops gradients after the frozen part: JAX then builds
no backward pass through it at all, which is ConVIRT's setting (embeddings and the first 6 layers frozen).
The optimizer must also leave those parameters alone (see `frozen_mask`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class SelfAttention(nn.Module):
    """Multi-head self-attention with a padding mask, then output projection, dropout, residual and LayerNorm."""

    hidden_size: int
    num_heads: int
    dropout: float
    layer_norm_eps: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, mask, train: bool):
        """Hidden states [B, T, H] and mask [B, T] (1 = token, 0 = padding) → [B, T, H]."""
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}")
        head = self.hidden_size // self.num_heads
        dense = lambda name: nn.Dense(self.hidden_size, dtype=self.dtype, name=name)  # noqa: E731
        split = lambda y: y.reshape(*y.shape[:2], self.num_heads, head)  # noqa: E731
        q, k, v = (split(dense(name)(x)) for name in ("query", "key", "value"))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(head)
        scores = jnp.where(mask[:, None, None, :] > 0, scores, jnp.finfo(jnp.float32).min)
        probs = nn.Dropout(self.dropout)(jax.nn.softmax(scores, axis=-1), deterministic=not train)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v).reshape(x.shape)
        out = nn.Dropout(self.dropout)(dense("output")(context), deterministic=not train)
        return nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name="output_norm")(x + out)


class Layer(nn.Module):
    """One post-LN transformer layer: attention, then a GELU feed-forward, each with residual and LayerNorm."""

    hidden_size: int
    num_heads: int
    intermediate_size: int
    dropout: float
    layer_norm_eps: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, mask, train: bool):
        """Hidden states [B, T, H] → [B, T, H]."""
        x = SelfAttention(self.hidden_size, self.num_heads, self.dropout, self.layer_norm_eps, self.dtype,
                          name="attention")(x, mask, train)
        y = nn.gelu(nn.Dense(self.intermediate_size, dtype=self.dtype, name="intermediate")(x), approximate=False)
        y = nn.Dropout(self.dropout)(nn.Dense(self.hidden_size, dtype=self.dtype, name="output")(y),
                                     deterministic=not train)
        return nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name="output_norm")(x + y)


class Bert(nn.Module):
    """Token ids [B, T] and attention mask [B, T] → last hidden states [B, T, hidden_size].

    BERT-base is the default; ConVIRT's CPU variants shrink it through the config.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    freeze_embeddings: bool = False
    frozen_layers: int = 0  # The first n layers get no gradient (and, with `frozen_mask`, no update).
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, train: bool = False):
        """Returns the last layer's hidden states; padding positions are computed but masked out of attention."""
        if not 0 <= self.frozen_layers <= self.num_layers:
            raise ValueError(f"frozen_layers={self.frozen_layers} must be in [0, num_layers={self.num_layers}]")
        if self.frozen_layers and not self.freeze_embeddings:
            raise ValueError("frozen_layers > 0 needs freeze_embeddings: a frozen layer passes no gradient down")
        length = input_ids.shape[1]
        if length > self.max_positions:
            raise ValueError(f"sequence length {length} exceeds max_positions={self.max_positions}")
        token_type_ids = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        embed = lambda num, name: nn.Embed(num, self.hidden_size, dtype=self.dtype, name=name,  # noqa: E731
                                           embedding_init=nn.initializers.normal(0.02))
        x = (embed(self.vocab_size, "word_embeddings")(input_ids)
             + embed(self.max_positions, "position_embeddings")(jnp.arange(length))[None]
             + embed(self.type_vocab_size, "token_type_embeddings")(token_type_ids))
        x = nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name="embeddings_norm")(x)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        if self.freeze_embeddings and not self.frozen_layers:
            x = jax.lax.stop_gradient(x)
        for i in range(self.num_layers):
            x = Layer(self.hidden_size, self.num_heads, self.intermediate_size, self.dropout, self.layer_norm_eps,
                      self.dtype, name=f"layer_{i}")(x, attention_mask, train)
            if i + 1 == self.frozen_layers:
                x = jax.lax.stop_gradient(x)
        return x


def frozen_mask(params, *, freeze_embeddings: bool, frozen_layers: int):
    """A pytree like a `Bert`'s params: True on the leaves that must not be trained."""
    frozen = {f"layer_{i}" for i in range(frozen_layers)}
    if freeze_embeddings:
        frozen |= {"word_embeddings", "position_embeddings", "token_type_embeddings", "embeddings_norm"}
    return {name: jax.tree.map(lambda _, f=name in frozen: f, sub) for name, sub in params.items()}


def masked_max_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Max over the token axis of [B, T, H], padding (mask 0) excluded: ConVIRT's sentence embedding."""
    return jnp.max(jnp.where(mask[..., None] > 0, hidden, jnp.finfo(hidden.dtype).min), axis=1)
