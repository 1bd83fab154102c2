"""BERT and the ConVIRT towers: shapes, padding, freezing (no gradient and no backward pass)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.methods.convirt import model as convirt
from cxr_jax.models import bert, resnet

TINY = dict(vocab_size=50, hidden_size=16, num_layers=3, num_heads=2, intermediate_size=32, max_positions=12)


def _tokens(batch=3, length=10, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 50, size=(batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, 6:] = 0
    mask[1, 3:] = 0
    return ids, mask


def test_shapes_and_bert_base_parameter_count():
    ids, mask = _tokens()
    model = bert.Bert(**TINY)
    variables = model.init(jax.random.key(0), ids, mask)
    assert model.apply(variables, ids, mask).shape == (3, 10, 16)
    # bert-base-uncased without its pooler: 109,482,240 - 768 * 768 - 768 = 108,891,648 parameters.
    shapes = jax.eval_shape(bert.Bert().init, jax.random.key(0), ids, mask)
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)) == 108_891_648


def test_padding_changes_nothing_at_the_real_tokens():
    ids, mask = _tokens()
    model = bert.Bert(**TINY)
    variables = model.init(jax.random.key(0), ids, mask)
    other = np.where(mask > 0, ids, 7)  # Different ids in the padding.
    out, out_other = model.apply(variables, ids, mask), model.apply(variables, other, mask)
    np.testing.assert_allclose(np.where(mask[..., None] > 0, out, 0), np.where(mask[..., None] > 0, out_other, 0),
                               atol=1e-6)
    pooled = bert.masked_max_pool(out, mask)
    np.testing.assert_allclose(pooled, bert.masked_max_pool(out_other, mask), atol=1e-6)
    np.testing.assert_allclose(pooled[1], np.asarray(out)[1, :3].max(0), atol=0)  # Only the 3 real tokens.


def test_sequence_longer_than_positions_is_an_error():
    ids, mask = _tokens(length=13)
    with pytest.raises(ValueError, match="exceeds max_positions=12"):
        bert.Bert(**TINY).init(jax.random.key(0), ids, mask)


def _count(jaxpr, name: str) -> int:
    """Occurrences of primitive `name` in a jaxpr and every jaxpr nested in it (scan, pjit, ...)."""
    total = 0
    for eqn in jaxpr.eqns:
        total += eqn.primitive.name == name
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += _count(inner, name)
    return total


@pytest.mark.parametrize("frozen_layers", [1, 2])
def test_frozen_layers_get_no_gradient_and_no_backward_pass(frozen_layers):
    ids, mask = _tokens()
    frozen = bert.Bert(**TINY, freeze_embeddings=True, frozen_layers=frozen_layers)
    params = frozen.init(jax.random.key(0), ids, mask)["params"]

    def loss(model):
        return lambda p: jnp.sum(model.apply({"params": p}, ids, mask) ** 2)

    grads = jax.grad(loss(frozen))(params)
    is_frozen = bert.frozen_mask(params, freeze_embeddings=True, frozen_layers=frozen_layers)
    for g, f in zip(jax.tree.leaves(grads), jax.tree.leaves(is_frozen)):
        assert (np.count_nonzero(g) == 0) == f
    # Each frozen layer drops the backward of its 8 products (6 dense + 2 attention einsums), 2 each.
    free_dots = _count(jax.make_jaxpr(jax.grad(loss(bert.Bert(**TINY))))(params).jaxpr, "dot_general")
    frozen_dots = _count(jax.make_jaxpr(jax.grad(loss(frozen)))(params).jaxpr, "dot_general")
    assert free_dots - frozen_dots >= 16 * frozen_layers


def test_frozen_layers_need_frozen_embeddings():
    ids, mask = _tokens()
    with pytest.raises(ValueError, match="needs freeze_embeddings"):
        bert.Bert(**TINY, frozen_layers=1).init(jax.random.key(0), ids, mask)


def test_convirt_towers_and_learned_temperature():
    ids, mask = _tokens()
    images = jnp.ones((3, 32, 32, 1))
    model = convirt.ConVIRT(resnet.ResNet((1, 1), "basic", 8), bert.Bert(**TINY), embed_dim=6, image_hidden_dim=10,
                            text_hidden_dim=12, temperature_init=0.07, learn_temperature=True)
    variables = model.init(jax.random.key(0), images, ids, mask)
    image, text, tau = model.apply(variables, images, ids, mask)
    assert image.shape == text.shape == (3, 6) and image.dtype == jnp.float32
    np.testing.assert_allclose(tau, 0.07, rtol=1e-6)
    assert set(variables["params"]) == {"image_encoder", "text_encoder", "image_head", "text_head",
                                        "log_inv_temperature"}
    assert variables["params"]["image_head"]["hidden"]["kernel"].shape == (16, 10)  # ResNet (1, 1) width 8: 16-d.
    np.testing.assert_allclose(model.apply(variables, ids, mask, method="embed_text"), text, atol=1e-6)
    big = jax.tree.map(lambda x: x, variables)
    big["params"]["log_inv_temperature"] = jnp.float32(10.0)
    np.testing.assert_allclose(model.apply(big, method="temperature"), 0.01, rtol=1e-6)  # Clipped at 1/τ = 100.
