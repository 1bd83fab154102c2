"""A small PyTorch DGM (Tang et al., MedIA 2021) for the parity tests; never imported by `cxr_jax`.

Written from the paper and MUNIT's layout (github.com/NVlabs/MUNIT, `networks.py`), not from the JAX code:
NCHW tensors, MUNIT's module nesting (`Conv2dBlock` = pad → conv → norm → activation inside `nn.Sequential`s,
so the state-dict keys read like MUNIT's), MUNIT's `LayerNorm` (divides by the unbiased std + eps, γ ~ U(0, 1)),
its AdaIN (`F.batch_norm` over the [1, B·C, H, W] view, weight and bias assigned from an MLP before decoding)
and its multi-scale LSGAN patch discriminator (`MsImageDis`, norm none, leaky ReLU 0.2, reflect padding,
3×3/stride-2 average pooling with padding 1 and count_include_pad=False between scales).

What the paper leaves open and this reference mirrors from `cxr_jax` (so that the two can be compared):
  * D_G's residual blocks use instance norm, D_F's none (`residue_res_norm`, also 'in' allowed), E_F none;
  * D_J decodes the channel concatenation [c_z, c_s] (so it is twice as wide as D_G), its residual blocks
    AdaIN-modulated by an MLP (MUNIT's, 3 layers) applied to c_s averaged over H, W (MUNIT instead has a
    separate style encoder);
  * instance norm always uses each image's own statistics (no running averages);
  * the losses use means (‖x‖₁ = mean |x|, ℓ_TV divided by the pixel count) and the LSGAN form with ½;
    ℓ_R³ is the batch mean of mean |r| with abnormal inputs counting 0; L_D's fakes are y′ of every input,
    its reals the batch's normal images only; L_D is not weighted by λ_A;
  * one step: D's Adam step on L_D, then G's Adam step on L_G scored by the updated D; Adam with PyTorch's
    L2 `weight_decay`.

`to_flax(state_dict)` maps a state dict of `Generator` or `MultiScaleDiscriminator` onto the parameter tree
`cxr_jax.methods.dgm.model.Generator.init` / `MultiScaleDiscriminator.init` produce.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# --- Normalisations ----------------------------------------------------------------------------------------


class LayerNorm(nn.Module):
    """MUNIT's layer norm: per-sample mean and unbiased std over (C, H, W), then per-channel γ, β."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.empty(channels).uniform_())
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        flat = x.reshape(x.shape[0], -1)
        mean = flat.mean(1).view(-1, 1, 1, 1)
        std = flat.std(1).view(-1, 1, 1, 1)  # Bessel-corrected, as torch's default and MUNIT.
        return (x - mean) / (std + self.eps) * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)


class AdaptiveInstanceNorm2d(nn.Module):
    """Instance norm whose per-sample affine (weight, bias: [B·C]) is assigned from outside before each call."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = channels
        self.eps = eps
        self.weight = None
        self.bias = None

    def forward(self, x):
        b, c, h, w = x.shape
        out = F.batch_norm(x.reshape(1, b * c, h, w), None, None, self.weight, self.bias, True, 0.0, self.eps)
        return out.view(b, c, h, w)


# --- Blocks ------------------------------------------------------------------------------------------------


class Conv2dBlock(nn.Module):
    """Pad → conv (with bias) → norm → activation."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0, norm="none", activation="relu", pad_type="reflect"):
        super().__init__()
        self.pad = nn.ReflectionPad2d(padding) if pad_type == "reflect" else nn.ZeroPad2d(padding)
        self.conv = nn.Conv2d(cin, cout, kernel, stride)
        self.norm = {"in": lambda: nn.InstanceNorm2d(cout), "ln": lambda: LayerNorm(cout),
                     "adain": lambda: AdaptiveInstanceNorm2d(cout), "none": lambda: None}[norm]()
        self.activation = {"relu": nn.ReLU, "lrelu": lambda: nn.LeakyReLU(0.2), "tanh": nn.Tanh,
                           "none": lambda: None}[activation]()

    def forward(self, x):
        x = self.conv(self.pad(x))
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class ResBlock(nn.Module):
    """x + (conv3 → norm → ReLU → conv3 → norm)(x)."""

    def __init__(self, dim, norm):
        super().__init__()
        self.model = nn.Sequential(Conv2dBlock(dim, dim, 3, 1, 1, norm=norm),
                                   Conv2dBlock(dim, dim, 3, 1, 1, norm=norm, activation="none"))

    def forward(self, x):
        return x + self.model(x)


class ResBlocks(nn.Module):
    """`n` residual blocks in sequence."""

    def __init__(self, n, dim, norm):
        super().__init__()
        self.model = nn.Sequential(*[ResBlock(dim, norm) for _ in range(n)])

    def forward(self, x):
        return self.model(x)


class ContentEncoder(nn.Module):
    """MUNIT's content encoder: conv7 → n_down × conv4/2 (channels ×2) → n_res residual blocks, all normed."""

    def __init__(self, n_down, n_res, cin, dim, norm):
        super().__init__()
        layers = [Conv2dBlock(cin, dim, 7, 1, 3, norm=norm)]
        for _ in range(n_down):
            layers.append(Conv2dBlock(dim, 2 * dim, 4, 2, 1, norm=norm))
            dim *= 2
        layers.append(ResBlocks(n_res, dim, norm))
        self.model = nn.Sequential(*layers)
        self.output_dim = dim

    def forward(self, x):
        return self.model(x)


class Decoder(nn.Module):
    """MUNIT's decoder: residual blocks → n_up × [nearest ×2, conv5, layer norm] (channels ÷2) → conv7, tanh."""

    def __init__(self, n_up, n_res, dim, cout, res_norm):
        super().__init__()
        layers = [ResBlocks(n_res, dim, res_norm)]
        for _ in range(n_up):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), Conv2dBlock(dim, dim // 2, 5, 1, 2, norm="ln")]
            dim //= 2
        layers.append(Conv2dBlock(dim, cout, 7, 1, 3, activation="tanh"))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class MLP(nn.Module):
    """MUNIT's MLP: `n_blk` − 1 Linear+ReLU layers of width `dim`, then a Linear to `cout`."""

    def __init__(self, cin, cout, dim, n_blk=3):
        super().__init__()
        layers = [_LinearBlock(cin, dim, True)]
        layers += [_LinearBlock(dim, dim, True) for _ in range(n_blk - 2)]
        layers.append(_LinearBlock(dim, cout, False))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x.reshape(x.shape[0], -1))


class _LinearBlock(nn.Module):
    def __init__(self, cin, cout, relu):
        super().__init__()
        self.fc = nn.Linear(cin, cout)
        self.relu = relu

    def forward(self, x):
        x = self.fc(x)
        return F.relu(x) if self.relu else x


class JointDecoder(nn.Module):
    """D_J: decodes [c_z, c_s] through AdaIN residual blocks; an MLP on the spatially pooled c_s gives AdaIN's
    parameters, assigned to the AdaIN layers in order, each taking (bias, weight) = the next 2·C outputs."""

    def __init__(self, n_up, n_res, code_dim, mlp_dim):
        super().__init__()
        self.dec = Decoder(n_up, n_res, 2 * code_dim, 1, "adain")
        n_adain = sum(2 * m.num_features for m in self.dec.modules() if isinstance(m, AdaptiveInstanceNorm2d))
        self.mlp = MLP(code_dim, n_adain, mlp_dim, 3)

    def adain_params(self, c_s):
        """The MLP's output for code c_s [B, C, h, w]."""
        return self.mlp(c_s.mean(dim=(2, 3)))

    def forward(self, c_z, c_s):
        params = self.adain_params(c_s)
        for m in self.dec.modules():
            if isinstance(m, AdaptiveInstanceNorm2d):
                c = m.num_features
                m.bias = params[:, :c].reshape(-1)
                m.weight = params[:, c:2 * c].reshape(-1)
                params = params[:, 2 * c:]
        return self.dec(torch.cat([c_z, c_s], dim=1))


class Generator(nn.Module):
    """E_G, E_F, D_G, D_F, D_J."""

    def __init__(self, dim=64, n_down=2, n_res=4, mlp_dim=256, residue_res_norm="none", cin=1):
        super().__init__()
        self.e_g = ContentEncoder(n_down, n_res, cin, dim, "in")
        self.e_f = ContentEncoder(n_down, n_res, cin, dim, "none")
        code = self.e_g.output_dim
        self.d_g = Decoder(n_down, n_res, code, cin, "in")
        self.d_f = Decoder(n_down, n_res, code, cin, residue_res_norm)
        self.d_j = JointDecoder(n_down, n_res, code, mlp_dim)

    def forward(self, z):
        """Z [B, 1, H, W] → {'normal': y′, 'residue': r, 'recon': z″}."""
        c_z, c_s = self.e_g(z), self.e_f(z)
        return {"normal": self.d_g(c_z), "residue": self.d_f(c_s), "recon": self.d_j(c_z, c_s)}


class MultiScaleDiscriminator(nn.Module):
    """MUNIT's `MsImageDis` with norm none, leaky ReLU, reflect padding; one score map per scale, finest first."""

    def __init__(self, dim=64, n_layers=4, num_scales=3, cin=1):
        super().__init__()
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.cnns = nn.ModuleList([self._net(dim, n_layers, cin) for _ in range(num_scales)])

    @staticmethod
    def _net(dim, n_layers, cin):
        layers = [Conv2dBlock(cin, dim, 4, 2, 1, activation="lrelu")]
        for _ in range(n_layers - 1):
            layers.append(Conv2dBlock(dim, 2 * dim, 4, 2, 1, activation="lrelu"))
            dim *= 2
        layers.append(nn.Conv2d(dim, 1, 1, 1, 0))
        return nn.Sequential(*layers)

    def forward(self, x):
        outputs = []
        for net in self.cnns:
            outputs.append(net(x))
            x = self.downsample(x)
        return outputs


def munit_init(module: nn.Module, kind: str) -> nn.Module:
    """MUNIT's `weights_init`: 'kaiming' (generator: fan-in normal) or 'gaussian' (discriminator: N(0, 0.02))
    for every conv and linear weight, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            if kind == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            else:
                nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


# --- Losses (the paper's, with norms as means) -------------------------------------------------------------


def adversarial(fake_scores):
    """ℓ_A: Σ_scales ½ E[(D(y′) − 1)²]."""
    return sum(0.5 * torch.mean((s - 1) ** 2) for s in fake_scores)


def discriminator_loss(fake_scores, real_normal_scores):
    """L_D: Σ_scales ½ E[D(y′)²] + ½ E_{y normal}[(D(y) − 1)²] (the reals are the normal images only)."""
    return sum(0.5 * torch.mean(f ** 2) + 0.5 * torch.mean((r - 1) ** 2)
               for f, r in zip(fake_scores, real_normal_scores, strict=True))


def total_variation(y):
    """ℓ_TV: Σ |vertical| + |horizontal| neighbour differences of y, over the number of elements of y."""
    return ((y[:, :, 1:] - y[:, :, :-1]).abs().sum() + (y[:, :, :, 1:] - y[:, :, :, :-1]).abs().sum()) / y.numel()


def generator_terms(z, out, fake_scores, is_normal):
    """ℓ_A, ℓ_R¹, ℓ_R², ℓ_R³, ℓ_TV (keys as `cxr_jax.methods.dgm.losses.generator_loss`)."""
    per_image_residue = out["residue"].abs().mean(dim=(1, 2, 3))
    return {"adversarial": adversarial(fake_scores),
            "recon_sum": (out["normal"] + out["residue"] - z).abs().mean(),
            "recon_joint": (out["recon"] - z).abs().mean(),
            "residue_normal": (per_image_residue * is_normal).mean(),
            "tv": total_variation(out["normal"])}


def generator_loss(terms, adversarial_weight=10.0, reconstruction_weight=10.0, tv_weight=1.0):
    """L_G = λ_A ℓ_A + λ_R (ℓ_R¹ + ℓ_R² + ℓ_R³) + λ_TV ℓ_TV."""
    return (adversarial_weight * terms["adversarial"]
            + reconstruction_weight * (terms["recon_sum"] + terms["recon_joint"] + terms["residue_normal"])
            + tv_weight * terms["tv"])


def train_step(g, d, opt_g, opt_d, z, is_normal, weights=(10.0, 10.0, 1.0), stale_d=False):
    """D's step on L_D (fakes detached), then G's step on L_G scored by the updated D; returns (L_D, L_G).

    `stale_d=True` scores G with D as it was before its step instead (the order the trainer must NOT have).
    """
    d_for_g = copy.deepcopy(d) if stale_d else d
    out = g(z)
    opt_d.zero_grad()
    l_d = discriminator_loss(d(out["normal"].detach()), d(z[is_normal > 0]))
    l_d.backward()
    opt_d.step()
    opt_g.zero_grad()
    l_g = generator_loss(generator_terms(z, out, d_for_g(out["normal"]), is_normal), *weights)
    l_g.backward()
    opt_g.step()
    return l_d.item(), l_g.item()


# --- state dict → flax parameter tree ----------------------------------------------------------------------

_ENCODER = {"e_g", "e_f"}
_DECODER = {"d_g", "d_f"}


def _flax_leaf(kind: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """(flax leaf name, array) for a torch parameter named `kind` (weight of a conv or linear, bias, γ, β)."""
    if kind == "weight" and value.ndim == 4:
        return "kernel", value.transpose(2, 3, 1, 0)  # OIHW → HWIO.
    if kind == "weight":
        return "kernel", value.T  # Linear [out, in] → Dense [in, out].
    return {"bias": "bias", "gamma": "scale", "beta": "bias"}[kind], value


def _block_path(rest: str) -> list[str]:
    """Path inside a ConvBlock of 'conv.weight', 'norm.gamma', ... ."""
    module, kind = rest.split(".")
    return ["Conv_0" if module == "conv" else "LayerNorm_0", kind]


def _res_path(rest: str) -> list[str]:
    """'model.J.model.K.conv.weight' inside a ResBlocks → ['ResBlock_J', 'ConvBlock_K', ...]."""
    j, k, inner = re.fullmatch(r"model\.(\d+)\.model\.(\d+)\.(.+)", rest).groups()
    return [f"ResBlock_{j}", f"ConvBlock_{k}", *_block_path(inner)]


def _encoder_path(rest: str) -> list[str]:
    i, inner = re.fullmatch(r"model\.(\d+)\.(.+)", rest).groups()
    if inner.startswith("model."):  # The ResBlocks, after the conv7 and the down-sampling convs.
        return _res_path(inner)
    return [f"ConvBlock_{i}", *_block_path(inner)]


def _decoder_path(rest: str) -> list[str]:
    i, inner = re.fullmatch(r"model\.(\d+)\.(.+)", rest).groups()
    if i == "0":
        return _res_path(inner)
    # Sequential indices after the ResBlocks: Upsample 1, conv 2, Upsample 3, conv 4, ..., last conv 2·n_up + 1.
    return [f"ConvBlock_{(int(i) - 1) // 2}", *_block_path(inner)]


def _path(key: str) -> list[str]:
    top, rest = key.split(".", 1)
    if top in _ENCODER:
        return [top, *_encoder_path(rest)]
    if top in _DECODER:
        return [top, *_decoder_path(rest)]
    if top == "d_j":
        part, rest = rest.split(".", 1)
        if part == "dec":
            return ["d_j", "Decoder_0", *_decoder_path(rest)]
        i, kind = re.fullmatch(r"model\.(\d+)\.fc\.(\w+)", rest).groups()
        return ["d_j", "MLP_0", f"Dense_{i}", kind]
    if top == "cnns":
        s, i, inner = re.fullmatch(r"(\d+)\.(\d+)\.(.+)", rest).groups()
        if inner.startswith("conv."):
            return [f"PatchDiscriminator_{s}", f"ConvBlock_{i}", *_block_path(inner)]
        return [f"PatchDiscriminator_{s}", "Conv_0", inner]  # The final 1×1 nn.Conv2d.
    raise KeyError(f"no flax counterpart for {key!r}")


def to_flax(state_dict) -> dict:
    """Maps a `Generator` or `MultiScaleDiscriminator` state dict (or a dict of same-keyed gradients) to the
    nested parameter dict flax builds for `cxr_jax.methods.dgm.model`'s module of the same name."""
    tree: dict = {}
    for key, value in state_dict.items():
        *path, kind = _path(key)
        name, array = _flax_leaf(kind, value.detach().cpu().numpy())
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[name] = np.ascontiguousarray(array)
    return tree


def count(module: nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in module.parameters())
