"""DGM (Tang et al., Medical Image Analysis 2021): normal-image synthesis and disease residue, MUNIT-style.

An input CXR z goes through two encoders: E_G (instance norm, which strips the per-image feature statistics
that carry disease) gives the content code c_z, and E_F (no normalisation, so the residue keeps its intensity)
gives c_s. Three decoders read them:

  y′ = D_G(c_z)          the synthesised normal image
  r  = D_F(c_s)          the residue (disease) map; z′ = y′ + r should give z back
  z″ = D_J(c_z, c_s)     a joint reconstruction, its residual blocks modulated by AdaIN parameters that an
                         MLP computes from the pooled c_s (MUNIT's style injection)

`MultiScaleDiscriminator` is MUNIT's LSGAN patch discriminator at 3 scales. Layer sizes, padding and
initialisation follow MUNIT (github.com/NVlabs/MUNIT, `networks.py`): reflect padding, Kaiming-normal
generator weights, N(0, 0.02) discriminator weights, zero biases.

Parameters at MUNIT's defaults (dim 64, n_down 2, n_res 4, mlp_dim 256, 1 channel; discriminator dim 64,
n_layers 4, 3 scales), checked against a PyTorch reference and closed-form arithmetic in
tests/methods/dgm/test_torch_reference.py:

  E_G, E_F        5,379,584 each    conv7 3,200 + conv4/2 131,200 + 524,544 + 4 res blocks × 1,180,160
  D_G, D_F        5,748,353 each    4 res blocks 4,720,640 + conv5+LN 819,584 + 204,992 + conv7 3,137
  D_J            25,218,817         decoder at 512 channels 22,981,889 + MLP 2,236,928 (256 → 256 → 256 → 8,192)
  Generator      47,474,691
  Discriminator   8,265,027         3 scales × 2,755,009 (1 → 64 → 128 → 256 → 512 → 1)

Where the paper is silent, this code chose (the PyTorch reference mirrors these choices):
D_G's residual blocks use instance norm (MUNIT's content-only decoder), D_F's none (`residue_res_norm`, like
E_F, so the residue keeps its intensity); D_J decodes the channel concatenation [c_z, c_s], so it is twice
D_G's width, and reads its AdaIN parameters (bias then scale per layer, MUNIT's order) from MUNIT's 3-layer MLP
applied to c_s averaged over H, W, with no separate style encoder; instance norm always uses each image's own
statistics (no running averages); the generator's Kaiming-normal init is Flax's truncated normal, of the same
variance as MUNIT's untruncated one. In the losses (`losses.py`): norms are means, ℓ_TV is divided by the pixel
count, the LSGAN terms carry ½ and are summed over scales, L_D is not weighted by λ_A (MUNIT weights its D loss
by its GAN weight), ℓ_R³ is averaged over the whole batch with abnormal inputs counting 0, and L_D's fakes are
the y′ of every input while its reals are the batch's normal images only. In training (`trainer.py`): every
batch holds a fixed `data.normal_fraction` of normals (at least one), 8 images in the paper config; D steps
first, then G against the updated D; Adam (0.5, 0.999) with PyTorch-style L2.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax import ops
from cxr_jax.models import layers

Dtype = Any
NORMS = ("in", "ln", "adain", "none")
GEN_INIT = nn.initializers.kaiming_normal()


def instance_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Per-sample, per-channel normalisation over H, W (biased variance, no affine), computed in float32.

    The sums over H, W and their gradients go through `ops.channel_sum` (fast on XLA:CPU).
    """
    x32, count = x.astype(jnp.float32), x.shape[1] * x.shape[2]
    centred = x32 - ops.channel_broadcast(ops.channel_sum(x32, per_example=True) / count, x.shape, True)
    var = ops.channel_sum(jnp.square(centred), per_example=True) / count
    return (centred * ops.channel_broadcast(jax.lax.rsqrt(var + eps), x.shape, True)).astype(x.dtype)


class LayerNorm(nn.Module):
    """MUNIT's layer norm: per-sample mean and (unbiased) std over C, H, W, then per-channel γ, β.

    Unlike `nn.LayerNorm` it divides by std + eps (not sqrt(var + eps)) and starts γ ~ U(0, 1), as MUNIT does.
    """

    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """NHWC in, NHWC out."""
        x32, count, channels = x.astype(jnp.float32), x.size // x.shape[0], x.shape[-1]

        def per_sample(v):  # [B] → [B, H, W, C], its gradient summed by `ops.channel_sum`.
            return ops.channel_broadcast(jnp.repeat(v[:, None], channels, axis=1), x.shape, True)

        centred = x32 - per_sample(ops.channel_sum(x32, per_example=True).sum(axis=1) / count)
        std = jnp.sqrt(ops.channel_sum(jnp.square(centred), per_example=True).sum(axis=1) / max(count - 1, 1))
        gamma = self.param("scale", nn.initializers.uniform(1.0), (channels,))
        beta = self.param("bias", nn.initializers.zeros, (channels,))
        y = centred * per_sample(1 / (std + self.eps)) * ops.channel_broadcast(gamma, x.shape)
        return (y + ops.channel_broadcast(beta, x.shape)).astype(x.dtype)


class ConvBlock(nn.Module):
    """Pad → conv → norm → activation (MUNIT's Conv2dBlock); padding (k − 1) // 2 keeps size / stride.

    `norm='adain'` takes its per-sample (scale, bias), each [B, C], as the `adain` argument.
    """

    features: int
    kernel: int
    stride: int = 1
    norm: str = "none"
    activation: str = "relu"  # relu | lrelu (slope 0.2) | tanh | none
    padding: str = "reflect"  # reflect | zero
    kernel_init: Any = GEN_INIT
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, adain: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        """NHWC in, NHWC out."""
        p = (self.kernel - 1) // 2
        if p:
            if self.padding == "reflect" and min(x.shape[1:3]) <= p:
                raise ValueError(f"reflect padding {p} needs feature maps larger than {p}; got {x.shape[1:3]} "
                                 "(image too small for this many down-sampling layers)")
            mode = "reflect" if self.padding == "reflect" else "constant"
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=mode)
        x = layers.Conv(self.features, (self.kernel, self.kernel), self.stride, padding="VALID",
                        kernel_init=self.kernel_init, dtype=self.dtype)(x)
        x = self._norm(x, adain)
        if self.activation == "relu":
            return nn.relu(x)
        if self.activation == "lrelu":
            return nn.leaky_relu(x, 0.2)
        if self.activation == "tanh":
            return jnp.tanh(x)
        return x

    def _norm(self, x, adain):
        if self.norm == "in":
            return instance_norm(x)
        if self.norm == "ln":
            return LayerNorm()(x)
        if self.norm == "adain":
            scale, bias = adain
            scale, bias = (ops.channel_broadcast(v.astype(x.dtype), x.shape, True) for v in (scale, bias))
            return instance_norm(x) * scale + bias
        if self.norm != "none":
            raise ValueError(f"unknown norm {self.norm!r}; expected one of {NORMS}")
        return x


class ResBlock(nn.Module):
    """x + (conv3 → norm → ReLU → conv3 → norm)(x)."""

    norm: str
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, adain: tuple | None = None) -> jax.Array:
        """`adain`: ((scale1, bias1), (scale2, bias2)) for `norm='adain'`."""
        first, second = adain if adain is not None else (None, None)
        y = ConvBlock(x.shape[-1], 3, norm=self.norm, dtype=self.dtype)(x, first)
        y = ConvBlock(x.shape[-1], 3, norm=self.norm, activation="none", dtype=self.dtype)(y, second)
        return x + y


def blocks(remat: bool) -> tuple[type[nn.Module], type[nn.Module]]:
    """(ConvBlock, ResBlock), or versions that recompute their activations in the backward pass.

    Callers name the blocks explicitly (`ConvBlock_i`, `ResBlock_i`), so parameters are the same either way.
    """
    return (nn.remat(ConvBlock), nn.remat(ResBlock)) if remat else (ConvBlock, ResBlock)


class Encoder(nn.Module):
    """conv7 → n_down × conv4/stride 2 (channels doubling) → n_res residual blocks, every conv normed by `norm`.

    Output: [B, H / 2^n_down, W / 2^n_down, dim · 2^n_down].
    """

    dim: int = 64
    n_down: int = 2
    n_res: int = 4
    norm: str = "in"
    dtype: Dtype = jnp.float32
    remat: bool = False  # Recompute each block in the backward pass instead of storing its activations.

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """NHWC image in [-1, 1] → content code."""
        conv, res = blocks(self.remat)
        x = conv(self.dim, 7, norm=self.norm, dtype=self.dtype, name="ConvBlock_0")(x)
        for i in range(self.n_down):
            x = conv(self.dim * 2 ** (i + 1), 4, 2, norm=self.norm, dtype=self.dtype, name=f"ConvBlock_{i + 1}")(x)
        for i in range(self.n_res):
            x = res(self.norm, dtype=self.dtype, name=f"ResBlock_{i}")(x)
        return x


class Decoder(nn.Module):
    """n_res residual blocks → n_up × [nearest ×2, conv5, layer norm] (channels halving) → conv7 → tanh."""

    n_up: int = 2
    n_res: int = 4
    res_norm: str = "in"  # 'adain' takes per-block parameters at call time.
    out_channels: int = 1
    dtype: Dtype = jnp.float32
    remat: bool = False  # As `Encoder.remat`.

    @nn.compact
    def __call__(self, x: jax.Array, adain: list | None = None) -> jax.Array:
        """Code [B, h, w, C] → image [B, h·2^n_up, w·2^n_up, out_channels] in (-1, 1), float32."""
        conv, res = blocks(self.remat)
        for i in range(self.n_res):
            x = res(self.res_norm, dtype=self.dtype, name=f"ResBlock_{i}")(x, adain[i] if adain is not None else None)
        for i in range(self.n_up):
            b, h, w, c = x.shape
            x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
            x = conv(c // 2, 5, norm="ln", dtype=self.dtype, name=f"ConvBlock_{i}")(x)
        x = ConvBlock(self.out_channels, 7, activation="tanh", dtype=self.dtype, name=f"ConvBlock_{self.n_up}")(x)
        return x.astype(jnp.float32)


class MLP(nn.Module):
    """MUNIT's MLP: Linear–ReLU blocks of width `dim`, a last linear layer to `out`."""

    dim: int
    out: int
    n_blocks: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, D] → [B, out] in float32."""
        for _ in range(self.n_blocks - 1):
            x = nn.relu(nn.Dense(self.dim, kernel_init=GEN_INIT, dtype=self.dtype)(x))
        return nn.Dense(self.out, kernel_init=GEN_INIT, dtype=self.dtype)(x).astype(jnp.float32)


class JointDecoder(nn.Module):
    """D_J: decodes concat(c_z, c_s) through AdaIN residual blocks whose parameters an MLP reads off pooled c_s."""

    n_up: int = 2
    n_res: int = 4
    mlp_dim: int = 256
    mlp_blocks: int = 3
    dtype: Dtype = jnp.float32
    remat: bool = False  # As `Encoder.remat`.

    @nn.compact
    def __call__(self, c_z: jax.Array, c_s: jax.Array) -> jax.Array:
        """Two codes [B, h, w, C] → reconstruction [B, h·2^n_up, w·2^n_up, 1]."""
        x = jnp.concatenate([c_z, c_s], axis=-1)
        channels = x.shape[-1]
        params = MLP(self.mlp_dim, self.n_res * 4 * channels, self.mlp_blocks, self.dtype)(c_s.mean(axis=(1, 2)))
        # MUNIT's order per AdaIN layer: the bias ("mean") then the scale ("std"); two layers per block.
        chunks = jnp.split(params, self.n_res * 4, axis=-1)
        adain = [((chunks[4 * i + 1], chunks[4 * i]), (chunks[4 * i + 3], chunks[4 * i + 2]))
                 for i in range(self.n_res)]
        return Decoder(self.n_up, self.n_res, "adain", dtype=self.dtype, remat=self.remat)(x, adain)


class Generator(nn.Module):
    """E_G, E_F, D_G, D_F and D_J; `__call__` returns all three outputs, the methods return parts of them."""

    dim: int = 64
    n_down: int = 2
    n_res: int = 4
    mlp_dim: int = 256
    residue_res_norm: str = "none"  # D_F's residual blocks: none (as E_F) or in.
    dtype: Dtype = jnp.float32
    remat: bool = False  # Recompute each conv and residual block in the backward pass (less memory).

    def setup(self):
        """The five sub-networks, named as in the paper."""
        r = self.remat
        self.e_g = Encoder(self.dim, self.n_down, self.n_res, "in", self.dtype, r)
        self.e_f = Encoder(self.dim, self.n_down, self.n_res, "none", self.dtype, r)
        self.d_g = Decoder(self.n_down, self.n_res, "in", dtype=self.dtype, remat=r)
        self.d_f = Decoder(self.n_down, self.n_res, self.residue_res_norm, dtype=self.dtype, remat=r)
        self.d_j = JointDecoder(self.n_down, self.n_res, self.mlp_dim, dtype=self.dtype, remat=r)

    def __call__(self, z: jax.Array) -> dict[str, jax.Array]:
        """Z [B, H, W, 1] in [-1, 1] → {'normal': y′, 'residue': r, 'recon': z″}, each [B, H, W, 1] float32."""
        c_z, c_s = self.e_g(z.astype(self.dtype)), self.e_f(z.astype(self.dtype))
        return {"normal": self.d_g(c_z), "residue": self.d_f(c_s), "recon": self.d_j(c_z, c_s)}

    def decompose(self, z: jax.Array) -> dict[str, jax.Array]:
        """Inference: the synthesised normal y′ and the residue r only (D_J is not run)."""
        return {"normal": self.d_g(self.e_g(z.astype(self.dtype))),
                "residue": self.d_f(self.e_f(z.astype(self.dtype)))}


class AutoEncoder(nn.Module):
    """The anomaly baseline: a convolutional autoencoder with a dense bottleneck, trained on normals only.

    E (as E_F, no norm, no residual blocks) → flatten → Dense(latent) → Dense → reshape → D (as D_G, no
    residual blocks) → tanh. The bottleneck stops it learning the identity, so what it cannot reconstruct
    (z − AE(z)) marks what it never saw in normal images.
    """

    dim: int = 32
    n_down: int = 3
    latent: int = 128
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        """Z [B, H, W, 1] in [-1, 1] → reconstruction [B, H, W, 1] float32."""
        code = Encoder(self.dim, self.n_down, 0, "none", self.dtype)(z.astype(self.dtype))
        b, h, w, c = code.shape
        x = nn.Dense(self.latent, kernel_init=GEN_INIT, dtype=self.dtype)(code.reshape(b, -1))
        x = nn.relu(nn.Dense(h * w * c, kernel_init=GEN_INIT, dtype=self.dtype)(x)).reshape(b, h, w, c)
        return Decoder(self.n_down, 0, "none", dtype=self.dtype)(x)


class PatchDiscriminator(nn.Module):
    """conv4/stride 2 from `dim` channels doubling over `n_layers` layers, leaky ReLU 0.2, then a 1×1 conv."""

    dim: int = 64
    n_layers: int = 4
    dtype: Dtype = jnp.float32
    init_std: float = 0.02  # MUNIT's N(0, 0.02) weights.

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, 1] → patch scores [B, H / 2^n_layers, W / 2^n_layers, 1] in float32."""
        init = nn.initializers.normal(self.init_std)
        for i in range(self.n_layers):
            x = ConvBlock(self.dim * 2**i, 4, 2, activation="lrelu", kernel_init=init, dtype=self.dtype)(x)
        return layers.Conv(1, (1, 1), kernel_init=init, dtype=self.dtype)(x).astype(jnp.float32)


class MultiScaleDiscriminator(nn.Module):
    """The patch discriminator at `num_scales` scales, each half the last (3×3 average pool, stride 2)."""

    dim: int = 64
    n_layers: int = 4
    num_scales: int = 3
    dtype: Dtype = jnp.float32
    init_std: float = 0.02  # MUNIT's N(0, 0.02) weights.
    input_blur: float = 0.0  # σ (pixels) of a Gaussian blur of every image D sees, real and fake; 0: none.

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        """Images [B, H, W, 1] → one score map per scale, finest first."""
        outputs = []
        x = gaussian_blur(x.astype(self.dtype), self.input_blur) if self.input_blur else x.astype(self.dtype)
        for _ in range(self.num_scales):
            outputs.append(PatchDiscriminator(self.dim, self.n_layers, self.dtype, self.init_std)(x))
            x = nn.avg_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)), count_include_pad=False)
        return outputs


def gaussian_blur(x: jax.Array, sigma: float) -> jax.Array:
    """[B, H, W, 1] blurred by a separable Gaussian of `sigma` pixels (radius 3σ), edges reflected.

    For the discriminator's `input_blur`: a sharpness cue (y′ is smoother than any real image) is then no longer
    enough to tell fakes from reals; shapes and intensities, which lesions change, still are.
    """
    radius = max(int(np.ceil(3 * sigma)), 1)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = jnp.asarray(taps / taps.sum(), x.dtype)
    x = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
    dn = ("NHWC", "HWIO", "NHWC")
    x = jax.lax.conv_general_dilated(x, taps.reshape(-1, 1, 1, 1), (1, 1), "VALID", dimension_numbers=dn)
    return jax.lax.conv_general_dilated(x, taps.reshape(1, -1, 1, 1), (1, 1), "VALID", dimension_numbers=dn)


def min_image_size(*, n_layers: int, num_scales: int) -> int:
    """The smallest input for which the coarsest discriminator scale still has reflect-paddable maps."""
    return 2 ** (n_layers + num_scales - 1)
