"""A U-Net on a VGG16-bn encoder: LD's backbone (Chen et al., TPAMI 2023) and the project's segmenters.

The encoder follows the official LD code's `vgg16_bn_tiny` (configuration 'G'): 3×3 conv + BatchNorm + ReLU
layers with 2×2 max-pools between stages, returning each stage's output before its pool (strides 1, 2, 4, 8)
and the last stage's (stride 16). The decoder up-samples by nearest ×2, concatenates the skip and applies two
conv–BN–ReLU layers per level; its last level returns full-resolution features for the task heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxr_jax import ops
from cxr_jax.models.layers import BatchNorm, Conv

# Channels per conv; 'M' is a 2×2 max-pool (the official `vgg16_bn_tiny`, without its final pool).
VGG16_TINY = (16, 16, "M", 32, 32, "M", 64, 64, 64, "M", 128, 128, 128, "M", 128, 128, 128)

# PyTorch's kaiming_normal_(mode='fan_out', nonlinearity='relu'), as the official code initialises convs.
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvBNReLU(nn.Module):
    """3×3 conv (zero padding) → BatchNorm (PyTorch's momentum 0.1, eps 1e-5) → ReLU."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """[B, H, W, C_in] → [B, H, W, features]; `train` uses and updates the batch statistics."""
        x = Conv(self.features, (3, 3), padding=1, kernel_init=KAIMING_FAN_OUT, dtype=self.dtype)(x)
        x = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)(x)
        return ops.relu(x)


def conv_block(remat: bool) -> type[nn.Module]:
    """`ConvBNReLU`, or its rematerialised version (same parameter names: pass `name` explicitly)."""
    return nn.remat(ConvBNReLU, static_argnums=(2,)) if remat else ConvBNReLU


class VGGEncoder(nn.Module):
    """VGG-bn features: one map per stage, finest first ([B, H, W, 16], [B, H/2, W/2, 32], …)."""

    layers: Sequence[int | str] = VGG16_TINY
    dtype: jnp.dtype = jnp.float32
    remat: bool = False  # Recompute each layer in the backward pass instead of keeping its activations.

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
        """Images [B, H, W, C] → each stage's features, finest first."""
        block, stages, convs = conv_block(self.remat), [], 0
        for layer in self.layers:
            if layer == "M":
                stages.append(x)
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            else:
                x = block(int(layer), self.dtype, name=f"ConvBNReLU_{convs}")(x, train)
                convs += 1
        return [*stages, x]


class UNetDecoder(nn.Module):
    """From the coarsest stage up: nearest ×2, concatenate the skip, two conv–BN–ReLU per level.

    `widths[i]` are the convs' channels at the i-th level from the coarsest; the official decoder's
    channel_num=[128, 128, 64, 32, 16] gives ((128, 64), (64, 32), (32, 16), (16, 16)). An empty last level,
    (), returns the concatenation itself, as LD's official decoder does before its heads.
    """

    widths: Sequence[tuple[int, ...]] = ((128, 64), (64, 32), (32, 16), (16, 16))
    dtype: jnp.dtype = jnp.float32
    remat: bool = False  # As `VGGEncoder.remat`.

    @nn.compact
    def __call__(self, stages: Sequence[jax.Array], train: bool = False) -> jax.Array:
        """The encoder's stages (finest first) → full-resolution features."""
        *skips, x = stages
        if len(skips) != len(self.widths):
            raise ValueError(f"the decoder has {len(self.widths)} levels but the encoder gave {len(skips)} skips")
        block, convs = conv_block(self.remat), 0
        for skip, level in zip(reversed(skips), self.widths):
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
            for width in level:
                x = block(width, self.dtype, name=f"ConvBNReLU_{convs}")(x, train)
                convs += 1
        return x


class UNet(nn.Module):
    """Encoder + decoder → full-resolution features [B, H, W, widths[-1][1]].

    H and W must be divisible by 2^(number of pools).
    """

    layers: Sequence[int | str] = VGG16_TINY
    widths: Sequence[tuple[int, int]] = ((128, 64), (64, 32), (32, 16), (16, 16))
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        """The encoder and decoder as named submodules (`encoder`, `decoder`) for transfer."""
        self.encoder = VGGEncoder(self.layers, self.dtype)
        self.decoder = UNetDecoder(self.widths, self.dtype)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Images [B, H, W, C] → features [B, H, W, widths[-1][1]]."""
        return self.decoder(self.encoder(x, train), train)


class SegmentationUNet(nn.Module):
    """A U-Net with a 3×3 conv head: one logit per structure and pixel [B, H, W, num_classes] (float32).

    Structures may overlap (clavicles over lungs), so each channel is its own sigmoid.
    """

    num_classes: int
    layers: Sequence[int | str] = VGG16_TINY
    widths: Sequence[tuple[int, int]] = ((128, 64), (64, 32), (32, 16), (16, 16))
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Images [B, H, W, C] → logits [B, H, W, num_classes]."""
        features = UNet(self.layers, self.widths, self.dtype, name="unet")(x, train)
        logits = Conv(self.num_classes, (3, 3), padding=1, kernel_init=KAIMING_FAN_OUT, dtype=self.dtype,
                         name="head")(features)
        return logits.astype(jnp.float32)


def num_pools(layers: Sequence[int | str]) -> int:
    """How many times the encoder halves the resolution (image sizes must be divisible by 2 to this)."""
    return sum(layer == "M" for layer in layers)
