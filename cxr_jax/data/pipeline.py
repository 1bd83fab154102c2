"""tf.data input pipelines whose position is the step number, so resuming is exact.

Example `g` of the global stream (g = step * global_batch + row) is example
`index_shuffle(g mod N, seed=(seed, g div N))`: a fresh permutation each epoch, computed per element, with
nothing to checkpoint but the step. Each host builds only the rows of each global batch that its devices
hold, and per-example augmentation is seeded by `(seed, g)`, so the examples a run sees do not depend on the
number of hosts or devices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import numpy as np
import tensorflow as tf

from cxr_jax import parallel

Example = dict[str, tf.Tensor]
Preprocess = Callable[[Example], Example]


def _configure_tf() -> None:
    """TF must never take an accelerator from JAX; done before any TF op runs."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # Already initialised (e.g. by an earlier pipeline in this process).
        pass


_configure_tf()


def train_dataset(examples: dict[str, np.ndarray], *, preprocess: Preprocess, global_batch: int, seed: int,
                  start_step: int, rows: tuple[int, int], prefetch: int = 2) -> tf.data.Dataset:
    """An endless dataset of this host's rows `[start, stop)` of each global batch from `start_step` on."""
    num = len(next(iter(examples.values())))
    if num == 0:
        raise ValueError("the training set is empty")
    start, stop = rows
    local = stop - start
    tables = {k: tf.constant(v) for k, v in examples.items()}

    def element(k):
        step, j = start_step + k // local, k % local
        g = step * global_batch + start + j
        epoch = g // num
        index = tf.random.experimental.index_shuffle(g % num, tf.stack([seed, epoch]), num - 1)
        example = {key: tf.gather(table, index) for key, table in tables.items()}
        example["seed"] = tf.stack([tf.cast(seed, tf.int64), g])
        return example

    ds = tf.data.Dataset.range(2**62).map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(local, drop_remainder=True).prefetch(prefetch)


def train_iterator(examples: dict[str, np.ndarray], *, preprocess: Preprocess, global_batch: int, seed: int,
                   start_step: int, mesh: jax.sharding.Mesh, prefetch: int = 2) -> Iterator[dict]:
    """Global batches (jax.Arrays sharded over 'data') for steps `start_step, start_step + 1, …`."""
    ds = train_dataset(examples, preprocess=preprocess, global_batch=global_batch, seed=seed,
                       start_step=start_step, rows=parallel.host_rows(global_batch, mesh), prefetch=prefetch)
    for batch in ds.as_numpy_iterator():
        batch.pop("seed", None)
        yield parallel.to_global(batch, mesh)


def eval_batches(examples: dict[str, np.ndarray], *, batch_size: int,
                 preprocess: Preprocess | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The whole set in order, in batches padded to `batch_size`; `mask` is 0 on the padding."""
    num = len(next(iter(examples.values())))
    ds = tf.data.Dataset.from_tensor_slices(examples)
    if preprocess is not None:
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for start, batch in zip(range(0, num, batch_size), ds.batch(batch_size).as_numpy_iterator()):
        size = min(batch_size, num - start)
        batch = {k: _pad(v, batch_size) for k, v in batch.items()}
        batch["mask"] = (np.arange(batch_size) < size).astype(np.float32)
        yield batch


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    pad = size - len(x)
    return np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
