"""DGM modules: shapes, the normalisations against NumPy, and what instance norm does for E_G."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax import parallel
from cxr_jax.methods.dgm import model as dgm

RNG = np.random.default_rng(0)


def _generator():
    return dgm.Generator(dim=4, n_down=2, n_res=1, mlp_dim=8)


def test_generator_and_discriminator_shapes():
    z = jnp.asarray(RNG.uniform(-1, 1, (2, 32, 32, 1)), jnp.float32)
    g = _generator()
    variables = g.init(jax.random.key(0), z)
    assert set(variables["params"]) == {"e_g", "e_f", "d_g", "d_f", "d_j"}
    out = g.apply(variables, z)
    assert {k: v.shape for k, v in out.items()} == {k: (2, 32, 32, 1) for k in ("normal", "residue", "recon")}
    assert all(float(jnp.abs(v).max()) < 1 for v in out.values())  # tanh outputs.
    code = g.apply(variables, z, method=lambda m, x: m.e_g(x))
    assert code.shape == (2, 8, 8, 16)  # 32 / 2², 4 · 2² channels.
    d = dgm.MultiScaleDiscriminator(dim=8, n_layers=3, num_scales=3)
    scores = d.apply(d.init(jax.random.key(1), z), z)
    assert [s.shape for s in scores] == [(2, 4, 4, 1), (2, 2, 2, 1), (2, 1, 1, 1)]
    assert dgm.min_image_size(n_layers=3, num_scales=3) == 32
    with pytest.raises(ValueError, match="too small"):
        d.init(jax.random.key(1), z[:, :16, :16])


def test_instance_norm_strips_each_images_intensity_statistics_from_e_g_only():
    z = jnp.asarray(RNG.uniform(-1, 1, (2, 32, 32, 1)), jnp.float32)
    g = _generator()
    variables = g.init(jax.random.key(0), z)
    brighter = 0.5 * z + 0.3  # The same anatomy at another window: a per-image affine intensity change.
    e_g = lambda x: g.apply(variables, x, method=lambda m, y: m.e_g(y))  # noqa: E731
    e_f = lambda x: g.apply(variables, x, method=lambda m, y: m.e_f(y))  # noqa: E731
    np.testing.assert_allclose(e_g(brighter), e_g(z), atol=2e-4)
    assert float(jnp.abs(e_f(brighter) - e_f(z)).max()) > 1e-2


def test_instance_norm_and_adain_match_numpy():
    x = RNG.normal(2.0, 3.0, (2, 5, 6, 3))
    mean, var = x.mean(axis=(1, 2), keepdims=True), x.var(axis=(1, 2), keepdims=True)
    want = (x - mean) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(dgm.instance_norm(jnp.asarray(x, jnp.float32)), want, rtol=1e-4, atol=1e-5)
    scale, bias = RNG.normal(size=(2, 3)), RNG.normal(size=(2, 3))
    block = dgm.ConvBlock(3, 1, norm="adain", activation="none")
    variables = block.init(jax.random.key(0), jnp.asarray(x, jnp.float32), (scale, bias))
    y = block.apply(variables, jnp.asarray(x, jnp.float32), (jnp.asarray(scale), jnp.asarray(bias)))
    k, b = (np.asarray(variables["params"]["Conv_0"][n], np.float64) for n in ("kernel", "bias"))
    conv = x @ k[0, 0] + b
    normed = (conv - conv.mean(axis=(1, 2), keepdims=True)) / np.sqrt(conv.var(axis=(1, 2), keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, normed * scale[:, None, None] + bias[:, None, None], rtol=1e-4, atol=1e-4)


def test_munit_layer_norm_matches_numpy():
    x = RNG.normal(1.0, 2.0, (2, 4, 4, 3))
    ln = dgm.LayerNorm()
    variables = ln.init(jax.random.key(0), jnp.asarray(x, jnp.float32))
    gamma = np.asarray(variables["params"]["scale"])
    assert 0 <= gamma.min() and gamma.max() < 1  # MUNIT's γ ~ U(0, 1).
    flat = x.reshape(2, -1)
    want = (x - flat.mean(1)[:, None, None, None]) / (flat.std(1, ddof=1)[:, None, None, None] + 1e-5) * gamma
    np.testing.assert_allclose(ln.apply(variables, jnp.asarray(x, jnp.float32)), want, rtol=1e-4, atol=1e-5)


def test_joint_decoder_is_styled_by_the_residue_code():
    c_z = jnp.asarray(RNG.normal(size=(2, 4, 4, 8)), jnp.float32)
    c_s = jnp.asarray(RNG.normal(size=(2, 4, 4, 8)), jnp.float32)
    d_j = dgm.JointDecoder(n_up=1, n_res=2, mlp_dim=8)
    variables = d_j.init(jax.random.key(0), c_z, c_s)
    mlp = variables["params"]["MLP_0"]
    assert mlp["Dense_2"]["kernel"].shape == (8, 2 * 4 * 16)  # 2 blocks × 2 AdaIN layers × (scale, bias) × 16 ch.
    assert d_j.apply(variables, c_z, c_s).shape == (2, 8, 8, 1)
    # The MLP reads the spatial mean of c_s: its captured output equals the MLP applied to the pooled code.
    _, seen = d_j.apply(variables, c_z, c_s, capture_intermediates=lambda m, name: isinstance(m, dgm.MLP))
    mlp_out = seen["intermediates"]["MLP_0"]["__call__"][0]
    want = dgm.MLP(8, 2 * 4 * 16).apply({"params": mlp}, c_s.mean(axis=(1, 2)))
    np.testing.assert_allclose(mlp_out, want, rtol=1e-6)


def _loss(params, model, z):
    return sum(jnp.mean(v**2) for v in model.apply({"params": params}, z).values())


@pytest.mark.slow
def test_remat_keeps_parameters_and_gradients_and_stores_less():
    z = jnp.asarray(RNG.uniform(-1, 1, (2, 16, 16, 1)), jnp.float32)
    models = {remat: dgm.Generator(dim=4, n_down=1, n_res=1, mlp_dim=8, remat=remat) for remat in (False, True)}
    params = jax.jit(models[False].init)(jax.random.key(0), z)["params"]
    shapes = jax.eval_shape(models[True].init, jax.random.key(0), z)["params"]
    assert jax.tree.structure(shapes) == jax.tree.structure(params)  # Checkpoints load with remat on or off.
    options = parallel.compiler_options(parallel.make_mesh(jax.devices()[:1]))  # As the train step compiles.
    grads, temp, flops = {}, {}, {}
    for remat, model in models.items():
        compiled = jax.jit(jax.grad(_loss), static_argnums=1, compiler_options=options).lower(
            params, model, z).compile()
        grads[remat] = compiled(params, z)
        temp[remat] = compiled.memory_analysis().temp_size_in_bytes
        flops[remat] = compiled.cost_analysis()["flops"]
    for a, b in zip(jax.tree.leaves(grads[False]), jax.tree.leaves(grads[True])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert flops[True] > 1.1 * flops[False]  # The forward pass runs again inside the backward pass ...
    assert temp[True] < 0.75 * temp[False]  # ... instead of keeping every block's activations.


@pytest.mark.parametrize("sigma", [1.0, 1.5])
def test_discriminator_input_blur_is_scipys_gaussian(sigma):
    ndimage = pytest.importorskip("scipy.ndimage")
    z = RNG.uniform(-1, 1, (2, 20, 17, 1))
    expected = np.stack([ndimage.gaussian_filter(a, sigma, mode="mirror", truncate=3.0) for a in z[..., 0]])
    np.testing.assert_allclose(dgm.gaussian_blur(jnp.asarray(z, jnp.float32), sigma)[..., 0], expected, atol=1e-5)
    d = dgm.MultiScaleDiscriminator(dim=8, n_layers=3, num_scales=1, input_blur=sigma)
    v = d.init(jax.random.key(1), jnp.asarray(z[:, :16, :16], jnp.float32))
    blurred = dgm.gaussian_blur(jnp.asarray(z[:, :16, :16], jnp.float32), sigma)
    plain = dgm.MultiScaleDiscriminator(dim=8, n_layers=3, num_scales=1)  # Same weights, no blur of its own.
    np.testing.assert_allclose(d.apply(v, jnp.asarray(z[:, :16, :16], jnp.float32))[0], plain.apply(v, blurred)[0],
                               atol=1e-6)
