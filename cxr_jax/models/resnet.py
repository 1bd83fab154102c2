"""ResNet in the torchvision layout (BatchNorm; bottleneck with the stride on the 3×3 conv).

`stage_sizes=(3, 4, 6, 3)`, `block='bottleneck'`, `width=64` is ResNet-50; smaller depths and widths serve CPU
runs. `num_classes=0` returns the pooled features (2048-d for ResNet-50).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax.numpy as jnp

from cxr_jax import ops
from cxr_jax.models import layers


def _layers(dtype, train: bool):
    """Bias-free conv and BatchNorm (torchvision's momentum 0.1 = flax 0.9, eps 1e-5)."""
    norm = partial(layers.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)
    return partial(layers.Conv, use_bias=False, dtype=dtype), norm


class BasicBlock(nn.Module):
    """Two 3×3 convs (ResNet-18/34)."""

    features: int
    strides: int
    dtype: jnp.dtype
    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool):
        """NHWC in, NHWC out (spatially / strides)."""
        conv, norm = _layers(self.dtype, train)
        residual = x
        y = ops.relu(norm()(conv(self.features, (3, 3), self.strides, padding=1)(x)))
        y = norm(scale_init=nn.initializers.zeros)(conv(self.features, (3, 3), padding=1)(y))
        if residual.shape != y.shape:
            residual = norm()(conv(self.features, (1, 1), self.strides)(residual))
        return ops.relu(y + residual)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (strided) → 1×1 with 4× expansion (ResNet-50 and up, torchvision's v1.5)."""

    features: int
    strides: int
    dtype: jnp.dtype
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool):
        """NHWC in, NHWC out with 4 × features channels."""
        conv, norm = _layers(self.dtype, train)
        residual = x
        y = ops.relu(norm()(conv(self.features, (1, 1))(x)))
        y = ops.relu(norm()(conv(self.features, (3, 3), self.strides, padding=1)(y)))
        y = norm(scale_init=nn.initializers.zeros)(conv(self.features * 4, (1, 1))(y))
        if residual.shape != y.shape:
            residual = norm()(conv(self.features * 4, (1, 1), self.strides)(residual))
        return ops.relu(y + residual)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """ResNet backbone with an optional linear head; inputs NHWC, any channel count."""

    stage_sizes: Sequence[int]
    block: str = "bottleneck"
    width: int = 64
    num_classes: int = 0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        """Images NHWC → logits [B, num_classes], or pooled features when num_classes is 0."""
        block = BLOCKS[self.block]
        conv, norm = _layers(self.dtype, train)
        x = norm(name="bn1")(conv(self.width, (7, 7), 2, padding=3, name="conv1")(x))
        x = nn.max_pool(ops.relu(x), (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for i, size in enumerate(self.stage_sizes):
            for j in range(size):
                strides = 2 if i > 0 and j == 0 else 1
                x = block(self.width * 2**i, strides, self.dtype, name=f"layer{i + 1}_{j}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        if self.num_classes:
            x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return x
