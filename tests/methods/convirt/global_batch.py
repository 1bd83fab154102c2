"""Run with 8 CPU devices: ConVIRT's loss in shard_map over a 'data' mesh; prints loss and gradients as JSON."""

import json
import sys
from functools import partial

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from cxr_jax.methods.convirt import losses as contrastive


def main():
    assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    n, d, tau, weight = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)
    mesh = jax.make_mesh((8,), ("data",))
    rows = NamedSharding(mesh, PartitionSpec("data"))

    @partial(jax.shard_map, mesh=mesh, in_specs=(PartitionSpec("data"), PartitionSpec("data")),
             out_specs=PartitionSpec())
    def loss(i, t):
        return contrastive.info_nce(image=i, text=t, temperature=tau, image_weight=weight, axis_name="data")

    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(jax.device_put(image, rows),
                                                                      jax.device_put(text, rows))
    print(json.dumps({"image": image.tolist(), "text": text.tolist(), "loss": float(value),
                      "grad_image": np.asarray(grads[0]).tolist(), "grad_text": np.asarray(grads[1]).tolist(),
                      "devices_per_grad": len(grads[0].sharding.device_set)}))


if __name__ == "__main__":
    main()
