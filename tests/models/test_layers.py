"""models.layers and ops.channel_sum: Flax's Conv and BatchNorm, summed differently, with the same results."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax import ops
from cxr_jax.models import layers

X = jax.random.normal(jax.random.key(1), (4, 12, 10, 24)) * 3 + 1


@pytest.mark.parametrize("shape", [(4, 12, 10, 24), (3, 5, 7), (6, 2048), (2, 7, 7, 2048)])
def test_channel_sum_is_a_float64_sum(shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(ops.channel_sum(x), x64.reshape(-1, shape[-1]).sum(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ops.channel_sum(x, per_example=True), x64.reshape(shape[0], -1, shape[-1]).sum(1),
                               rtol=1e-5, atol=1e-4)


def test_channel_sum_of_bfloat16_accumulates_in_float32():
    x = jnp.full((8, 64, 64, 16), 1.0, jnp.bfloat16)  # 32768 ones: a bfloat16 accumulator stops at 256.
    total = ops.channel_sum(x)
    assert total.dtype == jnp.bfloat16 and bool(jnp.all(total == 32768))


def test_channel_broadcast_gradient_is_the_channel_sum():
    v = jnp.arange(24.0)
    for per_example, value in ((False, v), (True, jnp.stack([v] * 4))):
        y, vjp = jax.vjp(lambda v, p=per_example: ops.channel_broadcast(v, X.shape, p), value)
        assert y.shape == X.shape and bool(jnp.all(y[1, 2, 3] == v))
        np.testing.assert_allclose(vjp(X)[0], ops.channel_sum(X, per_example=per_example), rtol=1e-6)


def _compare(ours: nn.Module, flax: nn.Module, *, train: bool, atol: float):
    """Same variables after init; same outputs, updated statistics and gradients from the same variables."""
    kwargs = {"use_running_average": not train} if isinstance(ours, layers.BatchNorm) else {}
    v_ours, v_flax = ours.init(jax.random.key(0), X, **kwargs), flax.init(jax.random.key(0), X, **kwargs)
    assert jax.tree.structure(v_ours) == jax.tree.structure(v_flax)
    jax.tree.map(np.testing.assert_array_equal, v_ours, v_flax)
    v = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(3), a.shape), v_flax)

    def loss(module, v, x):
        y, updates = module.apply(v, x, mutable=["batch_stats"], **kwargs)
        return jnp.sum(jnp.sin(y.astype(jnp.float32))), (y, updates)

    (l_ours, aux_ours), g_ours = jax.value_and_grad(loss, (1, 2), has_aux=True)(ours, v, X)
    (l_flax, aux_flax), g_flax = jax.value_and_grad(loss, (1, 2), has_aux=True)(flax, v, X)
    assert aux_ours[0].dtype == aux_flax[0].dtype
    np.testing.assert_allclose(l_ours, l_flax, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol), (aux_ours, g_ours),
                 (aux_flax, g_flax))


@pytest.mark.parametrize("kernel,kwargs", [
    ((3, 3), dict(padding=1)), ((3, 3), dict(padding="VALID", strides=2)), ((3, 3), dict(use_bias=False)),
    ((3, 3), dict(padding=1, kernel_init=nn.initializers.he_normal())),
    ((1, 1), {}), ((1, 1), dict(strides=2, use_bias=False)), ((1, 1), dict(padding="VALID", strides=(2, 1))),
    ((1, 1), dict(padding=1))])  # 1×1 without padding: a matmul; with padding: a conv.
def test_conv_is_flax_conv(kernel, kwargs):
    _compare(layers.Conv(7, kernel, **kwargs), nn.Conv(7, kernel, **kwargs), train=True, atol=2e-3)


@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_is_flax_batch_norm(train):
    kwargs = dict(momentum=0.9, epsilon=1e-5, scale_init=nn.initializers.zeros if not train else nn.initializers.ones)
    _compare(layers.BatchNorm(**kwargs), nn.BatchNorm(**kwargs), train=train, atol=2e-3)


def test_modules_take_flax_names():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return layers.BatchNorm(use_running_average=False)(nn.Conv(3, (1, 1))(layers.Conv(5, (1, 1))(x)))

    variables = Net().init(jax.random.key(0), X)
    assert set(variables["params"]) == {"Conv_0", "Conv_1", "BatchNorm_0"}
    assert set(variables["batch_stats"]["BatchNorm_0"]) == {"mean", "var"}
