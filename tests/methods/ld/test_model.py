"""LD's network: the official head layout on the U-Net, unit embeddings, assignments summing to one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.methods.ld import model as ld_model


@pytest.mark.slow
def test_heads_give_unit_embeddings_and_normalised_assignments():
    net = ld_model.LDNet(embed_dim=6, num_clusters=5, layers=(4, "M", 8, "M", 8), widths=((8, 4), ()))
    x = jax.random.normal(jax.random.key(1), (3, 16, 16, 1))
    variables = net.init(jax.random.key(0), x)
    out, _ = net.apply(variables, x, train=True, mutable=["batch_stats"])
    assert out["embedding"].shape == (3, 16, 16, 6) and out["assignment"].shape == (3, 16, 16, 5)
    np.testing.assert_allclose(jnp.linalg.norm(out["embedding"], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["assignment"].sum(-1), 1.0, rtol=1e-5)
    assert float(out["assignment"].min()) > 0
    assert set(variables["params"]) == {"encoder", "decoder", "embed", "cluster"}


def test_assignments_are_the_normalised_sigmoids_and_finite_when_all_underflow():
    net = ld_model.LDNet(embed_dim=6, num_clusters=5, layers=(4, "M", 8, "M", 8), widths=((8, 4), ()))
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
    variables = net.init(jax.random.key(0), x)

    def logits_and_assignment(variables):
        logits = net.apply(variables, x, method=lambda m, y: m.cluster(m.decoder(m.encoder(y, False), False), False))
        return np.asarray(logits, np.float64), np.asarray(net.apply(variables, x)["assignment"])

    logits, assignment = logits_and_assignment(variables)
    sigmoid = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(assignment, sigmoid / sigmoid.sum(-1, keepdims=True), rtol=1e-5)
    # Every logit near −200: each σ underflows to 0 in float32, and σ / Σσ would be 0 / 0.
    params = jax.tree.map(lambda a: a, variables["params"])
    params["cluster"]["Conv_0"]["bias"] = params["cluster"]["Conv_0"]["bias"] - 200.0
    logits, assignment = logits_and_assignment({**variables, "params": params})
    assert logits.max() < -110 and np.isfinite(assignment).all()
    np.testing.assert_allclose(assignment.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_parameter_count_matches_the_official_decoder_and_branches():
    def conv(cin, cout):
        return 9 * cin * cout + cout

    def conv_bn(cin, cout):
        return conv(cin, cout) + 2 * cout

    encoder = [(1, 16), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64), (64, 64), (64, 128), (128, 128),
               (128, 128), (128, 128), (128, 128), (128, 128)]
    decoder = [(256, 128), (128, 64), (128, 64), (64, 32), (64, 32), (32, 16)]  # Official channel_list.
    branches = conv_bn(32, 32) + conv(32, 32) + conv_bn(32, 16) + conv(16, 16)  # Embedding D=32, clusters K=16.
    want = sum(conv_bn(*c) for c in encoder + decoder) + branches
    variables = ld_model.LDNet().init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    assert sum(x.size for x in jax.tree.leaves(variables["params"])) == want


@pytest.mark.slow  # ~43 s; cheaper: DGM's remat test on the same mechanism.
def test_remat_keeps_the_parameter_names_and_the_gradients():
    kw = dict(embed_dim=6, num_clusters=5, layers=(4, "M", 8, "M", 8), widths=((8, 4), ()))
    plain, remat = ld_model.LDNet(**kw), ld_model.LDNet(**kw, remat=True)
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
    variables = plain.init(jax.random.key(0), x)
    assert jax.tree.structure(remat.init(jax.random.key(0), x)) == jax.tree.structure(variables)

    def loss(net, params):
        out, _ = net.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(out["embedding"] ** 2 * out["assignment"][..., :1])

    grads = [jax.grad(lambda p, net=net: loss(net, p))(variables["params"]) for net in (plain, remat)]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), *grads)


def test_shape_critic_gives_one_logit_per_map_at_the_official_size():
    critic = ld_model.ShapeDiscriminator()  # Five pools: 448 px → 14 → 10 after the unpadded convs.
    maps = jnp.zeros((2, 448, 448, 1)).at[1, 100:300, 80:200].set(1.0)
    variables = jax.eval_shape(critic.init, jax.random.key(0), maps[:1])
    assert jax.eval_shape(critic.apply, variables, maps).shape == (2,)
    small = ld_model.ShapeDiscriminator(channels=(4, 8))
    x = maps[:, ::14, ::14]  # 32 px.
    logits = small.apply(small.init(jax.random.key(0), x), x)
    assert logits.shape == (2,) and float(logits[0]) != float(logits[1])
