"""Mesh, shardings and multi-host set-up: data parallelism as `jax.jit` over a named 'data' axis.

Every host runs the same program on global `jax.Array`s. Batches are sharded along their leading axis over
the 'data' mesh axis, which spans all devices of all hosts; parameters and optimizer state are replicated.
XLA inserts the cross-device reductions (gradient means, BatchNorm statistics) that `pmap` code wrote by hand.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"

# Environment variables that ask for `jax.distributed.initialize`. With CXR_JAX_DISTRIBUTED=1 JAX detects
# the cluster itself (TPU pod, SLURM, Open MPI); JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES +
# JAX_PROCESS_ID set it up explicitly (what launch/multiprocess.py does for local CPU processes).
_ENV_AUTO = "CXR_JAX_DISTRIBUTED"
_ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"


def initialize() -> None:
    """Calls `jax.distributed.initialize` when launched multi-host; a no-op otherwise."""
    if os.environ.get(_ENV_COORDINATOR):
        jax.distributed.initialize(
            coordinator_address=os.environ[_ENV_COORDINATOR],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif os.environ.get(_ENV_AUTO) == "1":
        jax.distributed.initialize()


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh named 'data' over `devices` (default: every device of every host).

    The axis is `Auto`: jit's sharding propagation (GSPMD) places intermediates, constrained where a step says.
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices, axis_types=(jax.sharding.AxisType.Auto,))


def compiler_options(mesh: Mesh, *, ynn_fusions: bool = True) -> dict[str, str]:
    """XLA options for train steps on CPU; none on GPU and TPU.

    - Keep the optimization barriers that make `jax.checkpoint` work. XLA's CPU pipeline expands them early
      (pass `cse_barrier_expander`) and its later CSE merges the recomputed forward back into the stored one,
      so rematerialisation saved no memory at all.
    - With `ynn_fusions` False (the config's `train.cpu_ynn_fusions`, every config's default), leave ops to
      XLA's own CPU emitters, not YNNPACK, where this XLA has the option: faster and smaller for every
      method's step (docs/performance.md has the figures).
    """
    if mesh.devices.flat[0].platform != "cpu":
        return {}
    options = {"xla_disable_hlo_passes": "cse_barrier_expander"}
    if not ynn_fusions and _cpu_accepts(_NO_YNN, ""):
        options[_NO_YNN] = ""
    return options


_NO_YNN = "xla_cpu_experimental_ynn_fusion_type"  # Empty: no op is handed to YNNPACK.


@functools.cache
def _cpu_accepts(option: str, value: str) -> bool:
    """Whether this jaxlib's CPU compiler knows `option` (experimental XLA flags come and go)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options={option: value}).lower(1.0).compile()
    except jax.errors.JaxRuntimeError:
        return False
    return True


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of parameters and optimizer state: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch: leading axis split over 'data'."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    """A global batch must split evenly over the devices and hosts."""
    devices, hosts = mesh.devices.size, jax.process_count()
    if global_batch % devices or global_batch % hosts:
        from cxr_jax.config import ConfigError

        raise ConfigError(f"batch_size={global_batch} does not divide evenly over {devices} devices "
                         f"({hosts} hosts); use a multiple of {devices}")


def host_rows(global_batch: int, mesh: Mesh) -> tuple[int, int]:
    """The [start, stop) rows of a global batch that this host feeds, as the batch sharding lays them out."""
    sharding = batch_sharding(mesh)
    index_map = sharding.addressable_devices_indices_map((global_batch,))
    starts = [idx[0].start or 0 for idx in index_map.values()]
    stops = [global_batch if idx[0].stop is None else idx[0].stop for idx in index_map.values()]
    start, stop = min(starts), max(stops)
    if stop - start != global_batch // jax.process_count():
        raise ValueError("this host's devices do not hold one contiguous block of the batch")
    return start, stop


def to_global(local_batch, mesh: Mesh):
    """Host-local rows (as `host_rows` gives them) → global arrays sharded over 'data'."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def from_full(batch, mesh: Mesh):
    """A batch that every host holds in full (e.g. an eval batch) → global arrays sharded over 'data'."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_callback(x.shape, sharding, lambda i: x[i]), batch)
