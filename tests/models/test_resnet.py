import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.models import resnet


def _count(tree):
    return sum(np.prod(x.shape) for x in jax.tree.leaves(tree))


def test_resnet50_has_torchvision_parameter_count():
    # torchvision resnet50: 25,557,032 parameters, of which the 1000-way fc is 2048*1000 + 1000.
    model = resnet.ResNet((3, 4, 6, 3), "bottleneck", 64)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    assert _count(shapes["params"]) == 25_557_032 - 2_049_000
    assert model.apply(jax.tree.map(jnp.zeros_like, shapes), jnp.zeros((1, 224, 224, 3))).shape == (1, 2048)


def test_resnet18_parameter_count():
    # torchvision resnet18: 11,689,512 parameters including the 512*1000 + 1000 fc.
    model = resnet.ResNet((2, 2, 2, 2), "basic", 64, num_classes=1000)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert _count(shapes["params"]) == 11_689_512


def test_tiny_resnet_shapes_and_bf16_compute():
    model = resnet.ResNet((1, 1), "basic", 8, num_classes=1, dtype=jnp.bfloat16)
    x = jnp.ones((2, 32, 32, 1))
    variables = model.init(jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert out.shape == (2, 1) and out.dtype == jnp.bfloat16
    assert set(updates) == {"batch_stats"}
