"""Run with 8 CPU devices: the same steps on a 1-device and an 8-device mesh; prints the largest differences.

SGD replaces AdamW here because Adam's update is ~lr·sign(g): float reassociation in near-zero gradient
elements would flip whole steps and hide what this checks, that data-parallel gradients are the global ones.
"""

import json
import sys

import jax
import numpy as np
import optax

from cxr_jax import config as config_lib
from cxr_jax.methods.classifier import trainer as classifier
from cxr_jax.train import loop

STEPS = int(sys.argv[2]) if len(sys.argv) > 2 else 6


def run(config, devices):
    method = classifier.Classifier(config)
    method.tx = {"model": optax.sgd(0.05, momentum=0.9)}
    mesh = jax.make_mesh((len(devices),), ("data",), devices=devices)
    s = loop.setup(config, mesh=mesh, method=method)
    state = s.init_fn(jax.random.key(config.seed), s.first_batch)
    grad_fn = jax.jit(jax.grad(lambda p, b: classifier.sigmoid_bce(
        logits=method.model.apply({"params": p, **state.model_state}, b["image"], train=True,
                                  mutable=["batch_stats"])[0][:, 0], labels=b["label"]).mean()))
    grads = jax.device_get(grad_fn(state.params["model"], s.first_batch))
    losses = []
    for _ in range(STEPS):
        state, metrics = s.step_fn(state, next(s.batches))
        losses.append(float(metrics["loss"]))
    return grads, losses, jax.device_get(state)


def max_rel(a, b):
    return max(float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-12))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
    assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    config = config_lib.load(sys.argv[1])
    g1, l1, s1 = run(config, jax.devices()[:1])
    g8, l8, s8 = run(config, jax.devices())
    print(json.dumps({"grads": max_rel(g8, g1), "losses": max_rel(np.array(l8), np.array(l1)),
                      "params": max_rel(s8.params, s1.params), "batch_stats": max_rel(s8.model_state, s1.model_state),
                      "sharding": str(s8.params["model"]["conv1"]["kernel"].shape)}))


if __name__ == "__main__":
    main()
