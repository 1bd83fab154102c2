"""Run with 8 CPU devices: ConVIRT's loss and gradients on 1 and 8 devices, plain and gradient-cached.

Prints the largest relative differences as JSON.
"""

import json
import sys

import jax
import numpy as np

from cxr_jax import config as config_lib
from cxr_jax import parallel
from cxr_jax.methods.convirt import trainer as convirt
from cxr_jax.train import loop


def grads(config, devices, chunks):
    mesh = parallel.make_mesh(devices)
    method = convirt.ConVIRT(config, mesh)
    s = loop.setup(config, mesh=mesh, method=method)
    state = s.init_fn(jax.random.key(config.seed), s.first_batch)
    args = (state.params["model"], state.model_state, s.first_batch, jax.random.key(7))
    plain = jax.jit(jax.value_and_grad(method.loss, has_aux=True), static_argnums=4)(*args, 1)
    cached = jax.jit(method.cached_value_and_grad, static_argnums=4)(*args, chunks)
    chunked = jax.jit(jax.value_and_grad(method.loss, has_aux=True), static_argnums=4)(*args, chunks)
    keep = lambda out: jax.device_get((out[0][0], out[1], out[0][1]["model_state"]))  # noqa: E731
    return keep(plain), keep(cached), keep(chunked)


def max_rel(a, b):
    """Largest leaf difference relative to the leaf's scale, floored at 1e-3 of the tree's (some gradients,
    such as attention key biases', are exactly zero in theory and rounding noise in practice)."""
    floor = 1e-3 * max(float(np.max(np.abs(y))) for y in jax.tree.leaves(b))
    return max(float(np.max(np.abs(x - y)) / max(float(np.max(np.abs(y))), floor))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
    assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    config = config_lib.load(sys.argv[1], sys.argv[2:])
    p1, c1, k1 = grads(config, jax.devices()[:1], 2)
    p8, c8, k8 = grads(config, jax.devices(), 2)
    print(json.dumps({"plain_8_vs_1": max_rel(p8, p1), "cached_vs_chunked_1": max_rel(c1, k1),
                      "cached_vs_chunked_8": max_rel(c8, k8), "chunked_8_vs_1": max_rel(k8, k1),
                      "loss_1": float(p1[0]), "loss_8": float(p8[0])}))


if __name__ == "__main__":
    main()
