"""`Conv` and `BatchNorm` as Flax computes them, with their reductions over NHWC activations made fast.

Each has the same variables, initialisation and results as `flax.linen.Conv` / `flax.linen.BatchNorm` with
their defaults (and the same automatic names, `Conv_0`, `BatchNorm_0`), so checkpoints and imported
torchvision weights load unchanged. What differs is how the sums over all pixels are taken: a conv's bias
gradient and BatchNorm's statistics and their gradients go through `ops.channel_sum`, since XLA:CPU reduces
an NHWC activation over its leading axes many times slower (they took about half of LD's step); and a 1×1
conv is a matmul.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxr_jax import ops


class Conv(nn.Module):
    """A 2-D convolution of NHWC inputs with HWIO kernels, `flax.linen.Conv`'s variables and initialisers."""

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: str | int | Sequence[tuple[int, int]] = "SAME"
    use_bias: bool = True
    dtype: Any = None  # The computation's dtype; None: the inputs' and parameters' promoted dtype.
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[N, H, W, C_in] → [N, H', W', features]."""
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
        padding = [(self.padding, self.padding)] * 2 if isinstance(self.padding, int) else self.padding
        if tuple(self.kernel_size) == (1, 1) and _no_padding(padding):
            y = _pointwise(x, kernel, strides)
        else:
            y = jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y if bias is None else y + ops.channel_broadcast(bias, y.shape)


def _no_padding(padding) -> bool:
    return padding in ("SAME", "VALID") or all(tuple(p) == (0, 0) for p in padding)


def _pointwise(x: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
    """A 1×1 conv as a matmul over [N·H·W, C].

    XLA:CPU then takes its kernel gradient as a plain matmul too, where a conv's first lays the activation out
    channel-major (a transpose per conv; see docs/performance.md).
    """
    x = x[:, ::strides[0], ::strides[1]]
    n, h, w, c = x.shape
    return (x.reshape(n * h * w, c) @ kernel.reshape(c, -1)).reshape(n, h, w, -1)


class BatchNorm(nn.Module):
    """Normalises [N, ..., C] with the batch's statistics (training) or the running ones."""

    use_running_average: bool | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None  # The output's dtype; None: the input's promoted with float32.
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """Normalised `x`; in training also updates the running statistics (not while initialising)."""
        use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
        scale = self.param("scale", self.scale_init, features, jnp.float32)
        bias = self.param("bias", self.bias_init, features, jnp.float32)
        x32 = x.astype(jnp.float32)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            n = x.size // x.shape[-1]
            mean = ops.channel_sum(x32) / n
            var = jnp.maximum(ops.channel_sum(jnp.square(x32)) / n - jnp.square(mean), 0.0)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        y = x32 * ops.channel_broadcast(mul, x.shape) + ops.channel_broadcast(bias - mean * mul, x.shape)
        return y.astype(self.dtype or jnp.promote_types(x.dtype, jnp.float32))
