"""DGM's losses against float64 NumPy re-computations written from the paper's formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from cxr_jax.methods.dgm import losses

RNG = np.random.default_rng(0)
B, S = 4, 8


def _images(shift=0.0):
    return RNG.uniform(-1, 1, (B, S, S, 1)) + shift


def _scores():
    return [RNG.normal(0.5, 0.7, (B, 4, 4, 1)), RNG.normal(0.5, 0.7, (B, 2, 2, 1))]


def _np_tv(y):  # Σ over every pixel pair, one loop per direction, divided by the number of pixels.
    total = 0.0
    for b in range(y.shape[0]):
        for i in range(y.shape[1]):
            for j in range(y.shape[2]):
                if i + 1 < y.shape[1]:
                    total += abs(y[b, i + 1, j, 0] - y[b, i, j, 0])
                if j + 1 < y.shape[2]:
                    total += abs(y[b, i, j + 1, 0] - y[b, i, j, 0])
    return total / y.size


def _np_generator(z, y, r, z2, fake, normal, wa, wr, wt):
    adv = sum(0.5 * np.mean((f - 1) ** 2) for f in fake)
    r1 = np.mean(np.abs(y + r - z))
    r2 = np.mean(np.abs(z2 - z))
    r3 = np.mean([np.mean(np.abs(r[b])) if normal[b] else 0.0 for b in range(len(z))])
    tv = _np_tv(y)
    return wa * adv + wr * (r1 + r2 + r3) + wt * tv, dict(adversarial=adv, recon_sum=r1, recon_joint=r2,
                                                          residue_normal=r3, tv=tv)


def _np_discriminator(fake, real, normal):
    total = 0.0
    for f, rl in zip(fake, real):
        reals = [np.mean((rl[b] - 1) ** 2) for b in range(len(rl)) if normal[b]]
        total += 0.5 * np.mean(f**2) + 0.5 * np.mean(reals)
    return total


def test_generator_loss_and_each_term_match_numpy_float64():
    z, y, r, z2 = _images(), _images(), 0.3 * _images(), _images()
    fake, normal = _scores(), np.array([1, 0, 1, 0])
    total, terms = losses.generator_loss(
        image=jnp.asarray(z, jnp.float32), normal=jnp.asarray(y, jnp.float32), residue=jnp.asarray(r, jnp.float32),
        recon=jnp.asarray(z2, jnp.float32), fake_scores=[jnp.asarray(f, jnp.float32) for f in fake],
        is_normal=jnp.asarray(normal), adversarial_weight=10.0, reconstruction_weight=10.0, tv_weight=1.0)
    want_total, want_terms = _np_generator(z, y, r, z2, fake, normal, 10.0, 10.0, 1.0)
    for key, want in want_terms.items():
        np.testing.assert_allclose(float(terms[key]), want, rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(float(total), want_total, rtol=1e-5)


def test_residue_term_is_zero_on_abnormal_inputs_only():
    r = jnp.ones((B, S, S, 1))
    assert float(losses.residue_on_normals(residue=r, is_normal=jnp.zeros(B))) == 0.0
    assert float(losses.residue_on_normals(residue=r, is_normal=jnp.array([1, 0, 0, 0]))) == pytest.approx(0.25)


def test_discriminator_loss_uses_only_real_normals():
    fake, real, normal = _scores(), _scores(), np.array([0, 1, 1, 0])
    got = losses.discriminator_loss(fake_scores=[jnp.asarray(f, jnp.float32) for f in fake],
                                    real_scores=[jnp.asarray(x, jnp.float32) for x in real],
                                    real_weight=jnp.asarray(normal))
    np.testing.assert_allclose(float(got), _np_discriminator(fake, real, normal), rtol=1e-5)
    real[0][0] += 100.0  # An abnormal real image's scores do not count.
    again = losses.discriminator_loss(fake_scores=fake, real_scores=real, real_weight=jnp.asarray(normal))
    np.testing.assert_allclose(float(again), float(got), rtol=1e-6)


def test_fake_weight_keeps_only_the_chosen_inputs_fakes():
    fake, real, normal = _scores(), _scores(), np.array([0, 1, 1, 0])
    abnormal = 1.0 - normal
    got = losses.discriminator_loss(fake_scores=fake, real_scores=real, real_weight=jnp.asarray(normal),
                                    fake_weight=jnp.asarray(abnormal))
    kept = [f[abnormal == 1] for f in fake]  # The same loss on the abnormal inputs' fakes alone.
    want = sum(0.5 * np.mean(f**2) for f in kept) + sum(
        0.5 * np.mean((r[normal == 1] - 1.0) ** 2) for r in real)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    adversarial = losses.generator_adversarial(fake_scores=fake, fake_weight=jnp.asarray(abnormal))
    np.testing.assert_allclose(float(adversarial), sum(0.5 * np.mean((f - 1.0) ** 2) for f in kept), rtol=1e-5)
    everyone = losses.generator_adversarial(fake_scores=fake, fake_weight=jnp.ones(B))
    np.testing.assert_allclose(float(everyone), float(losses.generator_adversarial(fake_scores=fake)), rtol=1e-6)


def test_lsgan_optima():
    ones = [jnp.ones((B, 2, 2, 1)), jnp.ones((B, 1, 1, 1))]
    zeros = [jnp.zeros_like(s) for s in ones]
    assert float(losses.generator_adversarial(fake_scores=ones)) == 0.0  # D fooled: y′ scored real.
    assert float(losses.generator_adversarial(fake_scores=zeros)) == pytest.approx(1.0)  # ½ per scale, 2 scales.
    assert float(losses.discriminator_loss(fake_scores=zeros, real_scores=ones, real_weight=jnp.ones(B))) == 0.0


def test_total_variation_closed_form():
    ramp = jnp.tile(jnp.arange(S, dtype=jnp.float32)[None, :, None, None], (1, 1, S, 1))  # +1 per row.
    assert float(losses.total_variation(images=ramp)) == pytest.approx((S - 1) * S / (S * S))
    assert float(losses.total_variation(images=jnp.full((2, S, S, 1), 3.0))) == 0.0


def test_loss_gradients_match_finite_differences():
    z = jnp.asarray(_images(), jnp.float32)
    normal = jnp.array([1.0, 0.0, 1.0, 0.0])
    # Away from |x| kinks: residue and reconstructions offset from the target so L1's sign is fixed nearby.
    y, r, z2 = z + 0.5, jnp.full_like(z, 0.2), z - 0.4
    fake = [jnp.asarray(s, jnp.float32) for s in _scores()]

    def g_loss(y, r, z2, f0, f1):
        return losses.generator_loss(image=z, normal=y, residue=r, recon=z2, fake_scores=[f0, f1], is_normal=normal,
                                     adversarial_weight=10.0, reconstruction_weight=10.0, tv_weight=0.0)[0]

    check_grads(g_loss, (y, r, z2, *fake), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
    check_grads(lambda f, rl: losses.discriminator_loss(fake_scores=[f], real_scores=[rl], real_weight=normal),
                (fake[0], fake[1][:, :1, :1].repeat(4, 1).repeat(4, 2)), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
    # ℓ_TV is piecewise linear: on an image increasing along both axes its gradient is exact in closed form,
    # −1 on the first and +1 on the last row and column (interior differences cancel), over the pixel count.
    i, j = np.meshgrid(np.arange(S), np.arange(S), indexing="ij")
    ramp = jnp.asarray((0.1 * i + 0.01 * j)[None, :, :, None], jnp.float32)
    grad = jax.grad(lambda x: losses.total_variation(images=x))(ramp)
    want = (i == S - 1).astype(float) - (i == 0) + (j == S - 1) - (j == 0)
    np.testing.assert_allclose(np.asarray(grad)[0, :, :, 0], want / (S * S), atol=1e-7)


def test_autoencoder_loss_counts_normal_images_only():
    z, recon, normal = _images(), _images(), np.array([1, 0, 1, 0])
    got = losses.autoencoder_loss(recon=jnp.asarray(recon, jnp.float32), image=jnp.asarray(z, jnp.float32),
                                  is_normal=jnp.asarray(normal))
    want = np.mean([np.mean(np.abs(recon[b] - z[b])) for b in range(B) if normal[b]])
    np.testing.assert_allclose(got, want, rtol=1e-6)
