"""LD's network (Chen et al., TPAMI 2023): a VGG16-bn-tiny U-Net with an embedding and a clustering head.

As in the official code, the decoder's last level only up-samples and concatenates the finest skip; each head
is conv–BN–ReLU → conv on that map. The embedding head gives per-pixel features scaled to unit length; the
clustering head gives per-pixel soft assignments to K clusters (a sigmoid per cluster, then divided by their
sum so they add up to one).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxr_jax.models import layers, unet
from cxr_jax.ops import l2_normalize

# The official decoder: three conv levels, then up-sample + concatenate only (the heads' input).
LD_WIDTHS = ((128, 64), (64, 32), (32, 16), ())


class Head(nn.Module):
    """conv3×3–BN–ReLU → conv3×3 with `features` channels each (the official embedding/clustering branch)."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """[B, H, W, C] → [B, H, W, features] in float32."""
        x = unet.ConvBNReLU(self.features, self.dtype)(x, train)
        x = layers.Conv(self.features, (3, 3), padding=1, kernel_init=unet.KAIMING_FAN_OUT, dtype=self.dtype)(x)
        return x.astype(jnp.float32)


class LDNet(nn.Module):
    """Images [B, H, W, C] → {'embedding': [B, H, W, D] unit vectors, 'assignment': [B, H, W, K] summing to 1}.

    H and W must be divisible by 2^(number of pools). `encoder` has the same layout as `unet.UNet`'s, so a
    segmenter can start from it.
    """

    embed_dim: int = 32
    num_clusters: int = 16
    layers: Sequence[int | str] = unet.VGG16_TINY
    widths: Sequence[tuple[int, ...]] = LD_WIDTHS
    dtype: jnp.dtype = jnp.float32
    remat: bool = False  # Recompute each conv block and head in the backward pass instead of storing it.

    def setup(self):
        """Named submodules: `encoder`, `decoder`, `embed`, `cluster`."""
        self.encoder = unet.VGGEncoder(self.layers, self.dtype, self.remat)
        self.decoder = unet.UNetDecoder(self.widths, self.dtype, self.remat)
        head = nn.remat(Head, static_argnums=(2,)) if self.remat else Head
        self.embed = head(self.embed_dim, self.dtype)
        self.cluster = head(self.num_clusters, self.dtype)

    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """Both heads on the decoder's full-resolution map."""
        features = self.decoder(self.encoder(x, train), train)
        embedding = self.embed(features, train)
        embedding = l2_normalize(embedding)
        # σ(l_k) / Σ_j σ(l_j), computed as a softmax of log σ: equal, but finite where every σ underflows to 0
        # (there σ / Σσ is 0 / 0).
        assignment = jax.nn.softmax(jax.nn.log_sigmoid(self.cluster(features, train).astype(jnp.float32)), axis=-1)
        return {"embedding": embedding, "assignment": assignment}


class ShapeDiscriminator(nn.Module):
    """The shape prior's critic (official `Discriminator`): is a [B, H, W, 1] map a real mask? → logits [B].

    [conv3×3 → LeakyReLU → 2×2 max-pool] per entry of `channels`, two unpadded conv3×3 → LeakyReLU, a global
    mean, then 1×1 conv → LeakyReLU → 1×1 conv. The official code writes `nn.LeakyReLU(True)`, whose first
    argument is the slope, so its "leaky ReLU" is the identity; `negative_slope` = 1 reproduces that.
    H and W must leave at least 5 pixels after the pools.
    """

    channels: Sequence[int] = (16, 32, 32, 32, 32)
    negative_slope: float = 0.2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps [B, H, W, 1] in [0, 1] → one logit per map [B] (the official sigmoid is in the loss)."""
        act = functools.partial(nn.leaky_relu, negative_slope=self.negative_slope)
        for width in self.channels:
            x = nn.max_pool(act(nn.Conv(width, (3, 3), padding=1)(x)), (2, 2), strides=(2, 2))
        width = self.channels[-1]
        for _ in range(2):
            x = act(nn.Conv(width, (3, 3), padding="VALID")(x))
        x = act(nn.Dense(width)(jnp.mean(x, axis=(1, 2))))
        return nn.Dense(1)(x)[:, 0]
