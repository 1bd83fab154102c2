"""Run with 8 CPU devices: DGM steps (D, G, AE) on a 1-device and an 8-device mesh; prints the differences.

SGD replaces Adam for the reason given in `dp_equivalence`: Adam's ~sign(g) update would turn float
reassociation in near-zero gradients into whole-step differences. Parameter differences are relative to each
network's largest parameter: a conv bias followed by instance norm has a zero gradient up to rounding, so
its own scale (~1e-9) says nothing.
"""

import json
import sys

import jax
import numpy as np
import optax

from cxr_jax import config as config_lib
from cxr_jax.methods.dgm import trainer as dgm
from cxr_jax.train import loop
from tests.train.dp_equivalence import max_rel

STEPS = 3


def run(config, devices):
    method = dgm.DGM(config)
    method.tx = {name: optax.sgd(0.05) for name in method.tx}
    mesh = jax.make_mesh((len(devices),), ("data",), devices=devices)
    s = loop.setup(config, mesh=mesh, method=method)
    state = s.init_fn(jax.random.key(config.seed), s.first_batch)
    losses = []
    for _ in range(STEPS):
        state, metrics = s.step_fn(state, next(s.batches))
        losses.append([float(metrics[k]) for k in ("g_loss", "d_loss", "ae_recon")])
    s.batches.close()
    return np.array(losses), jax.device_get(state.params)


def main():
    assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    config = config_lib.load(sys.argv[1])
    l1, p1 = run(config, jax.devices()[:1])
    l8, p8 = run(config, jax.devices())
    print(json.dumps({"losses": max_rel(l8, l1), **{name: tree_rel(p8[name], p1[name]) for name in p1}}))


def tree_rel(a, b) -> float:
    """max |a − b| over all leaves / max |b| over all leaves."""
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    return diff / max(float(np.max(np.abs(y))) for y in jax.tree.leaves(b))


if __name__ == "__main__":
    main()
