"""ConVIRT's two towers (Zhang et al., MLHC 2022), each with a two-layer projection head into one space.

`embed_images` and `embed_text` are separate methods, so retrieval embeds one side alone and gradient caching
re-runs one tower on a micro-batch. The embeddings are returned unnormalised: the loss normalises them.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cxr_jax.models import bert, layers


class ProjectionHead(nn.Module):
    """Linear → ReLU → Linear (the paper's g_v and g_u); optionally BatchNorm before the ReLU (SimCLR's head).

    The BatchNorm centres the hidden features over the batch. From random towers, whose pooled features point
    almost the same way for every input, this keeps a tower from collapsing to one embedding early in
    training (the paper starts from pretrained towers and needs no norm).
    """

    hidden_dim: int
    out_dim: int
    batch_norm: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        """[B, in] → [B, out_dim]."""
        x = nn.Dense(self.hidden_dim, dtype=self.dtype, name="hidden")(x)
        if self.batch_norm:
            x = layers.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name="norm")(x)
        return nn.Dense(self.out_dim, dtype=self.dtype, name="out")(nn.relu(x))


class ConVIRT(nn.Module):
    """Image tower (e.g. a `ResNet` with num_classes=0) and a `Bert` text tower, each with a projection head.

    With `learn_temperature` the model owns `log_inv_temperature` (CLIP's parametrisation), initialised at
    1/temperature; otherwise `temperature()` returns the fixed value.
    """

    image_encoder: nn.Module
    text_encoder: bert.Bert
    embed_dim: int = 512
    image_hidden_dim: int = 2048
    text_hidden_dim: int = 768
    temperature_init: float = 0.1
    learn_temperature: bool = False
    head_batch_norm: bool = False
    dtype: jnp.dtype = jnp.float32

    def setup(self):  # noqa: D102
        self.image_head = ProjectionHead(self.image_hidden_dim, self.embed_dim, self.head_batch_norm, self.dtype)
        self.text_head = ProjectionHead(self.text_hidden_dim, self.embed_dim, self.head_batch_norm, self.dtype)
        if self.learn_temperature:
            self.log_inv_temperature = self.param(
                "log_inv_temperature", nn.initializers.constant(-np.log(self.temperature_init)), ())

    def embed_images(self, images, train: bool = False):
        """Images NHWC → [B, embed_dim] float32."""
        return self.image_head(self.image_encoder(images, train=train), train).astype(jnp.float32)

    def embed_text(self, input_ids, attention_mask, train: bool = False):
        """Token ids and mask [B, T] → [B, embed_dim] float32, from the max over non-padding tokens."""
        hidden = self.text_encoder(input_ids, attention_mask, train=train)
        return self.text_head(bert.masked_max_pool(hidden, attention_mask), train).astype(jnp.float32)

    def temperature(self):
        """τ of the loss: learned (clipped to ≥ 0.01, as CLIP clips 1/τ at 100) or fixed."""
        if not self.learn_temperature:
            return jnp.float32(self.temperature_init)
        return jnp.exp(-jnp.minimum(self.log_inv_temperature, np.log(100.0)))

    def __call__(self, images, input_ids, attention_mask, train: bool = False):
        """Both embeddings and τ (initialises every parameter)."""
        return (self.embed_images(images, train), self.embed_text(input_ids, attention_mask, train),
                self.temperature())
