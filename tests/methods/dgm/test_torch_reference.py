"""Proof of fidelity: the JAX DGM against a PyTorch DGM written from the paper and MUNIT (`torch_reference`).

The same weights go into both; every sub-network's output, L_G and its terms, L_D, one G and one D gradient and
two full trainer steps (D's Adam step, then G's against the updated D, Adam with L2) must agree to float32
rounding. A parameter count per sub-network at MUNIT's defaults is checked against both models and against
closed-form arithmetic.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax import config as config_lib
from cxr_jax.methods.dgm import losses, trainer
from cxr_jax.methods.dgm import model as dgm
from cxr_jax.train import state as state_lib
from tests.conftest import ROOT

torch = pytest.importorskip("torch")
from tests.methods.dgm import torch_reference as ref  # noqa: E402

torch.set_num_threads(1)

G_KW = dict(dim=8, n_down=2, n_res=2, mlp_dim=16)
D_KW = dict(dim=8, n_layers=3, num_scales=2)
LABELS = np.array([0, 1, 1, 0], np.int32)  # Mixed normal (0) / abnormal (1) inputs.
SIZE = 32
OUTPUT_ATOL = 1e-5
GRAD_RTOL = 1e-4
STEP_RTOL = 1e-4
# Less LLVM optimisation of the compiled CPU code (the same HLO, float32 throughout): ~40 % less compile time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _nhwc(t):
    return jnp.asarray(t.detach().numpy().transpose(0, 2, 3, 1))


def _tree_paths(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _grads(module):
    return ref.to_flax({n: p.grad for n, p in module.named_parameters()})


@pytest.fixture(scope="module")
def models():
    """Torch G and D with random weights AND random biases / LayerNorm β (so every mapped leaf matters), the
    same weights as flax trees, the DGM method on the same small config, and a batch."""
    torch.manual_seed(0)
    g = ref.munit_init(ref.Generator(**G_KW), "kaiming")
    # D at Kaiming scale rather than MUNIT's N(0, 0.02), so its scores (and ℓ_A's gradient into G) are O(1).
    d = ref.munit_init(ref.MultiScaleDiscriminator(**D_KW), "kaiming")
    with torch.no_grad():
        for name, p in [*g.named_parameters(), *d.named_parameters()]:
            if name.endswith(("bias", "beta")):
                p.normal_(0.0, 0.1)
    z = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (len(LABELS), 1, SIZE, SIZE)).astype(np.float32))
    config = config_lib.load(f"{ROOT / 'configs' / 'dgm.py'}:smoke", [
        "batch_size=4", *(f"model.generator.{k}={v}" for k, v in G_KW.items()),
        *(f"model.discriminator.{k}={v}" for k, v in D_KW.items()), "model.ae.enabled=False"])
    method = trainer.DGM(config)
    params = {"g": jax.tree.map(jnp.asarray, ref.to_flax(g.state_dict())),
              "d": jax.tree.map(jnp.asarray, ref.to_flax(d.state_dict()))}
    return g, d, z, method, params


def test_converted_trees_have_exactly_the_flax_structure(models):
    g, d, z, method, params = models
    z = _nhwc(z)
    for name, module in (("g", method.generator), ("d", method.discriminator)):
        shapes = jax.eval_shape(module.init, jax.random.key(0), z)["params"]
        assert jax.tree.structure(shapes) == jax.tree.structure(params[name])
        assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(lambda x: x.shape, params[name])


def _subnetwork_outputs_torch(g, d, z):
    with torch.no_grad():
        c_z, c_s = g.e_g(z), g.e_f(z)
        out = {"E_G": c_z, "E_F": c_s, "D_G": g.d_g(c_z), "D_F": g.d_f(c_s), "D_J": g.d_j(c_z, c_s),
               **{f"G.{k}": v for k, v in g(z).items()}}
        for s, scores in enumerate(d(z)):
            out[f"D scale {s}"] = scores
    return {k: _nhwc(v) for k, v in out.items()}


def _torch_losses(g, d, z, is_normal):
    out = g(z)
    l_d = ref.discriminator_loss(d(out["normal"].detach()), d(z[is_normal > 0]))
    terms = ref.generator_terms(z, out, d(out["normal"]), is_normal)
    return l_d, ref.generator_loss(terms), terms


def _jax_side(method, params, z, is_normal, c_z, c_s):
    """Every sub-network's output (each decoder fed the torch encoders' codes c_z, c_s, so that its difference
    is its own error only); L_D and its gradient; L_G, its terms and its gradient against the same D."""
    g, d = {"params": params["g"]}, {"params": params["d"]}
    apply = method.generator.apply
    outputs = {"E_G": apply(g, z, method=lambda m, x: m.e_g(x)),
               "E_F": apply(g, z, method=lambda m, x: m.e_f(x)),
               "D_G": apply(g, c_z, method=lambda m, x: m.d_g(x)),
               "D_F": apply(g, c_s, method=lambda m, x: m.d_f(x)),
               "D_J": apply(g, c_z, c_s, method=lambda m, a, b: m.d_j(a, b)),
               **{f"G.{k}": v for k, v in apply(g, z).items()}}
    for s, scores in enumerate(method.discriminator.apply(d, z)):
        outputs[f"D scale {s}"] = scores

    fake = apply(g, z)["normal"]
    l_d, d_grads = jax.value_and_grad(method.discriminator_loss)(params["d"], fake=fake, real=z,
                                                                 is_normal=is_normal)

    def l_g(p):
        out = apply({"params": p}, z)
        return method.generator_loss(out, d_params=params["d"], image=z, is_normal=is_normal)

    (l_g, terms), g_grads = jax.value_and_grad(l_g, has_aux=True)(params["g"])
    return outputs, (l_d, d_grads, l_g, terms, g_grads)


@pytest.fixture(scope="module")
def compared(models):
    """{'torch': ..., 'jax': ...}, each (sub-network outputs, (L_D, ∂L_D/∂D, L_G, L_G's terms, ∂L_G/∂G))."""
    g, d, z, method, params = models
    outputs = _subnetwork_outputs_torch(g, d, z)
    is_normal = torch.from_numpy((LABELS == 0).astype(np.float32))
    g.zero_grad(), d.zero_grad()
    l_d, _, _ = _torch_losses(g, d, z, is_normal)
    l_d.backward()
    d_grads = _grads(d)
    g.zero_grad(), d.zero_grad()
    _, l_g, terms = _torch_losses(g, d, z, is_normal)
    l_g.backward()
    g_grads = _grads(g)
    g.zero_grad(), d.zero_grad()
    want = (outputs, (l_d.item(), d_grads, l_g.item(), {k: v.item() for k, v in terms.items()}, g_grads))
    args = (params, _nhwc(z), jnp.asarray(LABELS == 0, jnp.float32), outputs["E_G"], outputs["E_F"])
    jitted = jax.jit(_jax_side, static_argnums=0).lower(method, *args).compile(FAST_COMPILE)
    return {"torch": want, "jax": jax.device_get(jitted(*args))}


def test_every_subnetwork_matches_the_torch_reference(compared):
    want, got = compared["torch"][0], compared["jax"][0]
    diffs = {k: float(np.abs(got[k] - want[k]).max()) for k in want}
    print("max |JAX − torch| per sub-network:", {k: f"{v:.1e}" for k, v in diffs.items()})
    assert {k: got[k].shape for k in want} == {k: want[k].shape for k in want}
    assert all(float(jnp.abs(v).max()) > 1e-2 for v in want.values())  # Nothing compared is trivially ~0.
    assert max(diffs.values()) <= OUTPUT_ATOL, diffs


def test_losses_match(compared):
    l_d, _, l_g, terms, _ = compared["torch"][1]
    got_d, _, got_g, got_terms, _ = compared["jax"][1]
    want = {"L_D": l_d, "L_G": l_g, **terms}
    got = {"L_D": float(got_d), "L_G": float(got_g), **{k: float(v) for k, v in got_terms.items()}}
    print("losses (torch, JAX):", {k: (want[k], got[k]) for k in want})
    assert all(v > 1e-2 for v in want.values())  # Every term, ℓ_R³ on the normals included, is non-trivial.
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-5)
    # ℓ_R³ counts only the normals: the same residues with every input abnormal give 0.
    assert float(losses.residue_on_normals(residue=jnp.ones((4, 2, 2, 1)), is_normal=jnp.zeros(4))) == 0.0


def _structurally_zero(path: str) -> bool:
    """Conv biases right before instance norm / AdaIN: the normalisation removes them, so ∂L/∂b = 0 exactly."""
    if not path.endswith("['Conv_0']['bias']"):
        return False
    return path.startswith("['e_g']") or ("ResBlock" in path and path.startswith(("['d_g']", "['d_j']")))


def _compare_grads(got, want):
    """Per leaf ‖got − want‖ / ‖want‖; the structurally zero leaves must be ~0 in both instead."""
    got, want = _tree_paths(got), _tree_paths(want)
    assert got.keys() == want.keys()
    total = np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in want.values()))
    rel, zero = {}, {}
    for k in want:
        if _structurally_zero(k):
            zero[k] = max(np.linalg.norm(got[k]), np.linalg.norm(want[k])) / total
        else:
            rel[k] = np.linalg.norm(got[k] - want[k]) / np.linalg.norm(want[k])
    return rel, zero


def test_one_generator_and_one_discriminator_gradient_match(compared):
    _, want_d, _, _, want_g = compared["torch"][1]
    _, got_d, _, _, got_g = compared["jax"][1]
    rel_d, zero_d = _compare_grads(got_d, want_d)
    rel_g, zero_g = _compare_grads(got_g, want_g)
    print(f"D grads: max rel {max(rel_d.values()):.1e} over {len(rel_d)} leaves; "
          f"G grads: max rel {max(rel_g.values()):.1e} over {len(rel_g)} leaves, "
          f"{len(zero_g)} structurally zero (max {max(zero_g.values()):.1e} of the global norm)")
    assert not zero_d and len(zero_g) == 3 + 2 * 2 + 2 * 2 + 2 * 2  # E_G's convs, D_G's and D_J's res blocks.
    assert max(rel_d.values()) <= GRAD_RTOL, max(rel_d.items(), key=lambda kv: kv[1])
    assert max(rel_g.values()) <= GRAD_RTOL, max(rel_g.items(), key=lambda kv: kv[1])
    assert max(zero_g.values()) <= 1e-6


def _torch_copy(g, d, optim):
    g2, d2 = ref.Generator(**G_KW), ref.MultiScaleDiscriminator(**D_KW)
    g2.load_state_dict(g.state_dict()), d2.load_state_dict(d.state_dict())
    adam = dict(lr=optim.learning_rate, betas=(optim.beta1, optim.beta2), eps=1e-8, weight_decay=optim.weight_decay)
    return g2, d2, torch.optim.Adam(g2.parameters(), **adam), torch.optim.Adam(d2.parameters(), **adam)


def test_two_trainer_steps_match_torch_adam_with_l2(models):
    g, d, z, method, params = models
    optim, w = method.config.optim, method.config.loss
    assert not optim.decay_every and not optim.ema_decay  # Constant rate, no EMA: plain Adam + L2 in both.
    weights = (w.adversarial, w.reconstruction, w.tv)
    is_normal = torch.from_numpy((LABELS == 0).astype(np.float32))
    g2, d2, opt_g, opt_d = _torch_copy(g, d, optim)  # Copies: the fixture's modules stay as they are.
    stale = _torch_copy(g, d, optim)  # The wrong order: G scored by D from before D's step.
    second = torch.flip(z, dims=(3,))  # Step 2 on another batch, so Adam's moments mix two gradients.

    state = state_lib.TrainState.create(params, method.tx)
    step = jax.jit(method.train_step).lower(state, {"image": _nhwc(z), "label": jnp.asarray(LABELS)}).compile(
        FAST_COMPILE)
    before = {"g": _tree_paths(params["g"]), "d": _tree_paths(params["d"])}
    worst, noise = {}, {}
    for images in (z, second):
        want_loss = ref.train_step(g2, d2, opt_g, opt_d, images, is_normal, weights)
        ref.train_step(*stale, images, is_normal, weights, stale_d=True)
        state, metrics = step(state, {"image": _nhwc(images), "label": jnp.asarray(LABELS)})
        np.testing.assert_allclose([float(metrics["d_loss"]), float(metrics["g_loss"])], want_loss, rtol=1e-5)
        for name, module in (("g", g2), ("d", d2)):
            got = _tree_paths(state.params[name])
            want = _tree_paths(ref.to_flax(module.state_dict()))
            for k in want:
                if _structurally_zero(k):
                    # Their gradient is float32 rounding noise (plus L2), which Adam scales up to ~lr per
                    # element in either framework: only that bound is common to both.
                    noise[name] = max(noise.get(name, 0.0), float(np.abs(got[k] - want[k]).max()))
                    continue
                after = np.linalg.norm(got[k] - want[k]) / np.linalg.norm(want[k])
                moved = np.linalg.norm(want[k] - before[name][k])  # The updates so far, ~lr per element.
                update = np.linalg.norm(got[k] - want[k]) / moved
                worst[name] = max(worst.get(name, (0, 0)), (after, update))
                assert after <= STEP_RTOL and update <= 1e-2, (name, k, after, update)
    # The order is visible: G's parameters are far closer to the D-first reference than to the stale-D one.
    got, want = _tree_paths(state.params["g"]), _tree_paths(ref.to_flax(g2.state_dict()))
    wrong = _tree_paths(ref.to_flax(stale[0].state_dict()))
    keep = [k for k in want if not _structurally_zero(k)]
    err = np.sqrt(sum(np.sum((got[k] - want[k]) ** 2) for k in keep))
    err_stale = np.sqrt(sum(np.sum((got[k] - wrong[k]) ** 2) for k in keep))
    print("after two steps, max per-leaf ‖Δparams‖/‖params‖ and ‖Δparams‖/‖update‖:", worst,
          "; structurally zero leaves, max |Δ| in units of lr:", {k: v / optim.learning_rate for k, v in noise.items()},
          f"; G distance to the D-first reference {err:.2e}, to the stale-D one {err_stale:.2e}")
    assert max(noise.values()) <= 4 * optim.learning_rate
    assert err_stale > 10 * err


# --- Parameter counts at MUNIT's defaults ------------------------------------------------------------------

MUNIT = dict(dim=64, n_down=2, n_res=4, mlp_dim=256)
MUNIT_D = dict(dim=64, n_layers=4, num_scales=3)


def _conv(cin, cout, k):
    return cin * cout * k * k + cout  # Weights and a bias.


def _closed_form():
    """The counts written out for dim 64, 2 down-samplings, 4 residual blocks, MLP 256, 1 channel."""
    res_block_256 = 2 * _conv(256, 256, 3)  # 2 × 590,080
    e_g = _conv(1, 64, 7) + _conv(64, 128, 4) + _conv(128, 256, 4) + 4 * res_block_256
    assert e_g == 3_200 + 131_200 + 524_544 + 4 * 1_180_160 == 5_379_584
    d_g = 4 * res_block_256 + (_conv(256, 128, 5) + 2 * 128) + (_conv(128, 64, 5) + 2 * 64) + _conv(64, 1, 7)
    assert d_g == 4_720_640 + 819_584 + 204_992 + 3_137 == 5_748_353  # LayerNorm γ, β after each up-conv.
    res_block_512 = 2 * _conv(512, 512, 3)  # D_J decodes [c_z, c_s]: 512 channels.
    d_j_decoder = (4 * res_block_512 + (_conv(512, 256, 5) + 2 * 256) + (_conv(256, 128, 5) + 2 * 128)
                   + _conv(128, 1, 7))
    adain = 4 * 2 * 2 * 512  # 4 blocks × 2 AdaIN layers × (bias, weight) × 512 channels.
    mlp = (256 * 256 + 256) + (256 * 256 + 256) + (256 * adain + adain)
    assert (d_j_decoder, mlp) == (18_878_464 + 3_277_568 + 819_584 + 6_273, 65_792 + 65_792 + 2_105_344)
    scale = _conv(1, 64, 4) + _conv(64, 128, 4) + _conv(128, 256, 4) + _conv(256, 512, 4) + _conv(512, 1, 1)
    assert scale == 1_088 + 131_200 + 524_544 + 2_097_664 + 513 == 2_755_009
    return {"E_G": e_g, "E_F": e_g, "D_G": d_g, "D_F": d_g, "D_J": d_j_decoder + mlp, "D": 3 * scale}


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_parameter_counts_at_munit_defaults():
    z = jax.ShapeDtypeStruct((1, 64, 64, 1), jnp.float32)  # 64 px: the smallest the 3-scale D accepts.
    g_shapes = jax.eval_shape(dgm.Generator(**MUNIT).init, jax.random.key(0), z)["params"]
    d_shapes = jax.eval_shape(dgm.MultiScaleDiscriminator(**MUNIT_D).init, jax.random.key(0), z)["params"]
    flax_counts = {**{k.upper(): _count(g_shapes[k]) for k in ("e_g", "e_f", "d_g", "d_f", "d_j")},
                   "D": _count(d_shapes)}
    with torch.device("meta"):  # Shapes only: no 190 MB of real weights.
        g, d = ref.Generator(**MUNIT), ref.MultiScaleDiscriminator(**MUNIT_D)
    torch_counts = {**{k.upper(): ref.count(getattr(g, k)) for k in ("e_g", "e_f", "d_g", "d_f", "d_j")},
                    "D": ref.count(d)}
    print("parameters:", flax_counts)
    assert flax_counts == torch_counts == _closed_form()
    assert sum(flax_counts.values()) - flax_counts["D"] == 47_474_691 and flax_counts["D"] == 8_265_027
