"""LD's losses against float64 NumPy re-computations of the official code, and their values at initialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from cxr_jax.methods.ld import losses
from cxr_jax.methods.ld import model as ld_model

RNG = np.random.default_rng(0)


def _unit(x, axis=-1):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def _np_batch_criterion(q, k, temperature):
    """The official BatchCriterion (negM = 1), step by step, with queries q and (stopped) keys k."""
    m = len(q)
    reordered = np.concatenate([k[m // 2:], k[:m // 2]])
    pos = np.exp((q * reordered).sum(1) / temperature)
    all_prob = np.exp(q @ k.T / temperature) * (1 - np.eye(m))
    all_div = all_prob.sum(1)
    ln_pmt = pos / all_div
    ln_pon = np.log(1 - all_prob / all_div[:, None]).sum(1) - np.log(1 - ln_pmt)
    return -(np.log(ln_pmt).sum() + ln_pon.sum()) / m


def test_invariance_spreading_matches_the_official_criterion():
    rows = _unit(RNG.normal(size=(24, 5)))
    got = losses.invariance_spreading(jnp.asarray(rows, jnp.float32), temperature=0.1)
    np.testing.assert_allclose(got, _np_batch_criterion(rows, rows, 0.1), rtol=1e-5)


def test_invariance_spreading_gradient_reaches_only_the_queries():
    rows = _unit(RNG.normal(size=(8, 3)))
    grad = jax.grad(lambda x: losses.invariance_spreading(x, temperature=0.5))(jnp.asarray(rows, jnp.float32))
    eps, numeric = 1e-6, np.zeros_like(rows)
    for idx in np.ndindex(rows.shape):  # Central differences of q ↦ L(q; keys fixed) in float64.
        step = np.zeros_like(rows)
        step[idx] = eps
        numeric[idx] = (_np_batch_criterion(rows + step, rows, 0.5)
                        - _np_batch_criterion(rows - step, rows, 0.5)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-5)


def test_patch_features_and_both_patch_losses_match_numpy():
    emb = RNG.normal(size=(4, 8, 8, 3))
    grid = 2
    pooled = _unit(emb.reshape(4, 2, 4, 2, 4, 3).mean(axis=(2, 4)))
    np.testing.assert_allclose(losses.patch_features(jnp.asarray(emb, jnp.float32), grid=grid), pooled, rtol=1e-5)
    v1, v2 = pooled[:2], pooled[2:]
    rows = np.concatenate([v1.reshape(-1, 3), v2.reshape(-1, 3)])
    np.testing.assert_allclose(losses.patch_discrimination(view1=jnp.asarray(v1), view2=jnp.asarray(v2)),
                               _np_batch_criterion(rows, rows, 0.1), rtol=1e-5)
    w = np.array([0.3, 0.7])
    target = _unit(w[:, None, None, None] * v1 + (1 - w[:, None, None, None]) * v2)
    mixed = pooled[[1, 3]]
    rows = np.concatenate([mixed.reshape(-1, 3), target.reshape(-1, 3)])
    got = losses.mixup(mixed=jnp.asarray(mixed), first=jnp.asarray(v1), second=jnp.asarray(v2),
                       weight=jnp.asarray(w), temperature=0.2)
    np.testing.assert_allclose(got, _np_batch_criterion(rows, rows, 0.2), rtol=1e-5)


def test_mixup_target_is_stopped():
    mixed, first, second = (jnp.asarray(_unit(RNG.normal(size=(2, 2, 2, 3))), jnp.float32) for _ in range(3))
    grads = jax.grad(lambda f, s: losses.mixup(mixed=mixed, first=f, second=s, weight=jnp.array([0.4, 0.6])),
                     argnums=(0, 1))(first, second)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in grads)


def test_region_losses_match_numpy():
    z = _unit(RNG.normal(size=(3, 4, 5, 6)))
    a = RNG.uniform(size=(3, 4, 5, 7))
    a /= a.sum(-1, keepdims=True)
    ref = _unit((z[:, None] * np.moveaxis(a, -1, 1)[..., None]).mean(axis=(2, 3)))  # [N, K, D] by broadcasting.
    regions = losses.region_embeddings(embedding=jnp.asarray(z, jnp.float32), assignment=jnp.asarray(a, jnp.float32))
    np.testing.assert_allclose(regions, ref, rtol=1e-5, atol=1e-6)
    centres = _unit(ref.mean(0))
    logits = np.einsum("nkd,jd->nkj", ref, centres) / 0.2
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = -np.mean(np.log(np.diagonal(softmax, axis1=1, axis2=2)))
    np.testing.assert_allclose(losses.region_discrimination(regions), expected, rtol=1e-5)
    entropy = np.mean(-a * np.log2(a) - (1 - a) * np.log2(1 - a))
    np.testing.assert_allclose(losses.binary_entropy(jnp.asarray(a, jnp.float32)), entropy, rtol=1e-5)


def test_region_losses_have_correct_gradients():
    z = jnp.asarray(_unit(RNG.normal(size=(2, 3, 3, 4))))
    logits = jnp.asarray(RNG.normal(size=(2, 3, 3, 5)))

    def loss(z, logits):
        a = jax.nn.softmax(logits, axis=-1)
        regions = losses.region_embeddings(embedding=z, assignment=a)
        return losses.region_discrimination(regions) + losses.binary_entropy(a)

    with jax.enable_x64():
        check_grads(loss, (z.astype(jnp.float64), logits.astype(jnp.float64)), order=1, modes=["rev"])


def test_a_cluster_without_mass_keeps_the_gradients_finite():
    """Sigmoid assignments underflow to exactly 0 for a dying cluster; its zero region must not give NaN."""
    z = jnp.asarray(_unit(RNG.normal(size=(2, 3, 3, 4))), jnp.float32)
    logits = jnp.asarray(RNG.normal(size=(2, 3, 3, 5)), jnp.float32).at[..., 0].set(-200.0)

    def assign(logits):
        a = jax.nn.sigmoid(logits)
        return a / a.sum(-1, keepdims=True)

    def loss(z, logits):
        return losses.region_discrimination(losses.region_embeddings(embedding=z, assignment=assign(logits)))

    assert float(jnp.max(assign(logits)[..., 0])) == 0.0
    grads = jax.grad(loss, argnums=(0, 1))(z, logits)
    assert all(np.isfinite(g).all() for g in grads)


def test_binary_entropy_of_rounded_up_certainties_is_finite():
    a = jnp.array([0.0, 1.0, np.nextafter(np.float32(1), np.float32(2)), 0.5], jnp.float32)  # 1 + 2⁻²³ happens.
    for fn in (losses.binary_entropy, jax.jit(losses.binary_entropy)):  # XLA once folded away the + 1e-30.
        np.testing.assert_allclose(fn(a), 0.25, rtol=1e-6)  # Only 0.5 carries one bit.
    assert np.isfinite(jax.jit(jax.grad(losses.binary_entropy))(a)).all()


def test_binary_entropy_gradient_is_autodiffs_inside_the_unit_interval():
    def plain(a):  # The formula, left to autodiff.
        a = jnp.clip(a, 0.0, 1.0)
        return jnp.mean(-a * jnp.log2(jnp.maximum(a, 1e-30)) - (1 - a) * jnp.log2(jnp.maximum(1 - a, 1e-30)))

    a = jnp.asarray(np.concatenate([RNG.uniform(size=20), [1e-35, 1e-6, 1 - 2**-24, -0.1, 1.2]]), jnp.float32)
    np.testing.assert_allclose(jax.jit(jax.grad(losses.binary_entropy))(a), jax.grad(plain)(a), rtol=1e-5, atol=1e-6)
    with jax.enable_x64():
        check_grads(losses.binary_entropy, (jnp.asarray(RNG.uniform(0.05, 0.95, size=8)),), order=1, modes=["rev"])


@pytest.mark.slow
def test_losses_at_initialisation_are_chance():
    k = 16
    net = ld_model.LDNet(embed_dim=32, num_clusters=k, layers=(8, "M", 8, "M", 16), widths=((8,), ()))
    images = jnp.asarray(RNG.uniform(-1, 1, size=(4, 32, 32, 1)), jnp.float32)
    out = net.apply(net.init(jax.random.key(0), images), images)
    regions = losses.region_embeddings(embedding=out["embedding"], assignment=out["assignment"])
    np.testing.assert_allclose(losses.region_discrimination(regions), np.log(k), rtol=0.02)
    p = 1 / k
    np.testing.assert_allclose(losses.binary_entropy(out["assignment"]),
                               -p * np.log2(p) - (1 - p) * np.log2(1 - p), rtol=0.05)


def _np_bce_of_sigmoid(logits, labels):
    """PyTorch's BCELoss(sigmoid(logits), labels), the official critic's output and loss, in float64."""
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return np.mean(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def test_r1_penalty_of_a_linear_critic_is_its_squared_weight_norm():
    w, x = RNG.normal(size=(5, 5, 1)), RNG.normal(size=(3, 5, 5, 1))
    grads = jax.grad(lambda maps: jnp.sum(maps * jnp.asarray(w, jnp.float32)) + 0.3)(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(losses.r1_penalty(grads), np.sum(w.astype(np.float64) ** 2), rtol=1e-5)
    g = RNG.normal(size=(4, 3, 3, 1))  # Mean over maps of each map's squared norm.
    np.testing.assert_allclose(losses.r1_penalty(jnp.asarray(g)), np.mean(np.sum(g ** 2, axis=(1, 2, 3))), rtol=1e-5)


def test_shape_losses_match_the_official_bce_on_sigmoid_outputs():
    real, fake = RNG.normal(size=6) * 3, RNG.normal(size=6) * 3
    np.testing.assert_allclose(losses.shape_generator(jnp.asarray(fake)), _np_bce_of_sigmoid(fake, np.ones(6)),
                               rtol=1e-5)
    want = _np_bce_of_sigmoid(np.concatenate([real, fake]), np.concatenate([np.ones(6), np.zeros(6)]))
    np.testing.assert_allclose(losses.shape_discriminator(real_logits=jnp.asarray(real), fake_logits=jnp.asarray(fake)),
                               want, rtol=1e-5)
    check_grads(lambda f: losses.shape_discriminator(real_logits=jnp.asarray(real), fake_logits=f),
                (jnp.asarray(fake, jnp.float32),), order=1, modes=["rev"], atol=1e-2)
