"""tf.data input pipelines whose position is the step number, so resuming is exact.

Example `g` of the global stream (g = step * global_batch + row) is example
`index_shuffle(g mod N, seed=(seed, g div N))`: a fresh permutation each epoch, computed per element, with
nothing to checkpoint but the step. Each host builds only the rows of each global batch that its devices
hold, and per-example augmentation is seeded by `(seed, g)`, so the examples a run sees do not depend on the
number of hosts or devices.

With a `composition` (rows per stratum of each global batch, strata given by an integer `stratum` column),
each stratum is such a stream of its own, its rows spread evenly over the batch: e.g. DGM's discriminator needs
normals in every batch. Without one, the whole set is a single stratum and the formula above is unchanged.

Examples hold either decoded `image`s or, for sets too large for memory (`data.*.stream`), their `file`s:
then `FileImages` decodes each image inside tf.data with the same `read_gray` as in-memory loading.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import jax
import numpy as np
import tensorflow as tf

from cxr_jax import parallel
from cxr_jax.data.sources import fileio

log = logging.getLogger("cxr_jax.data")

Example = dict[str, tf.Tensor]
Preprocess = Callable[[Example], Example]


def _configure_tf() -> None:
    """TF must never take an accelerator from JAX; done before any TF op runs."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # Already initialised (e.g. by an earlier pipeline in this process).
        pass


_configure_tf()


class FileImages:
    """Decodes example `file_index` → `image` from `files` inside tf.data (PIL releases the GIL while decoding).

    A bad file raises its `DataError` (`on_error='raise'`), or under 'skip' is counted, logged once and
    replaced by the next readable file in table order, so the stream's positions, and resumption, do not
    change (training); `readable` drops it instead (evaluation, where a stand-in would skew the metrics).
    """

    def __init__(self, files, *, image_size: int, on_error: str):
        if on_error not in fileio.ON_ERROR:
            raise fileio.DataError(f"data on_error must be one of {fileio.ON_ERROR}; got {on_error!r}")
        self.files, self.image_size, self.skip = [str(f) for f in files], image_size, on_error == "skip"
        self.bad: dict[int, str] = {}
        self.error: fileio.DataError | None = None
        self._lock = threading.Lock()

    def _read(self, index: int) -> np.ndarray | None:
        if index in self.bad:
            return None
        try:
            return fileio.read_gray(self.files[index], self.image_size)[0][..., None]
        except fileio.DataError as e:
            with self._lock:
                if not self.skip:
                    self.error = e
                    raise
                if index not in self.bad:
                    self.bad[index] = str(e)
                    log.warning("skipping a bad image (%d so far): %s", len(self.bad), e)
            return None

    def _substitute(self, index) -> np.ndarray:
        for k in range(len(self.files)):
            image = self._read((int(index) + k) % len(self.files))
            if image is not None:
                return image
        self.error = fileio.DataError(f"none of the {len(self.files)} image files is readable; first: {self.bad[0]}")
        raise self.error

    def _maybe(self, index) -> tuple[np.ndarray, np.bool_]:
        image = self._read(int(index))
        return (np.zeros((self.image_size, self.image_size, 1), np.uint8) if image is None else image,
                np.bool_(image is not None))

    def decode(self, example: dict) -> dict:
        """tf.data map: `file_index` → `image` (substituting for bad files under 'skip')."""
        example = dict(example)
        image = tf.numpy_function(self._substitute, [example.pop("file_index")], tf.uint8, stateful=False)
        example["image"] = tf.ensure_shape(image, [self.image_size, self.image_size, 1])
        return example

    def readable(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        """`ds` with `file_index` → `image`, bad files dropped under 'skip'."""

        def decode(example):
            example = dict(example)
            image, ok = tf.numpy_function(self._maybe, [example.pop("file_index")], (tf.uint8, tf.bool), stateful=False)
            example["image"] = tf.ensure_shape(image, [self.image_size, self.image_size, 1])
            return example, ok

        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.filter(lambda example, ok: ok).map(lambda example, ok: example)

    def reraise(self, error: tf.errors.OpError):
        """The `DataError` behind a tf.data failure, if a file caused it (else the original error)."""
        raise (self.error or error) from error


def _files(examples: dict, image_size: int | None, on_error: str) -> tuple[dict, FileImages | None]:
    """Swaps `file` for a `file_index` column and a `FileImages` reader when the examples are streamed."""
    if "file" not in examples or "image" in examples:
        return examples, None
    if image_size is None:
        raise ValueError("streamed examples (with `file`) need image_size")
    examples = dict(examples)
    reader = FileImages(examples.pop("file"), image_size=image_size, on_error=on_error)
    examples["file_index"] = np.arange(len(reader.files), dtype=np.int64)
    return examples, reader


def train_dataset(examples: dict[str, np.ndarray], *, preprocess: Preprocess, global_batch: int, seed: int,
                  start_step: int, rows: tuple[int, int], prefetch: int = 2, image_size: int | None = None,
                  on_error: str = "raise", composition: tuple[int, ...] | None = None,
                  ) -> tuple[tf.data.Dataset, FileImages | None]:
    """An endless dataset of this host's rows `[start, stop)` of each global batch from `start_step` on.

    `composition[s]` rows of each global batch come from the examples whose `stratum` column is s. Also
    returns the `FileImages` reader when the examples are streamed (`file` instead of `image`).
    """
    examples, reader = _files(examples, image_size, on_error)
    if len(next(iter(examples.values()))) == 0:
        raise ValueError("the training set is empty")
    members, per_batch = _strata(examples, global_batch, composition)
    examples = {k: v for k, v in examples.items() if k != "stratum"}
    row_stratum, row_rank = _spread(per_batch)
    start, stop = rows
    local = stop - start
    tables = {k: tf.constant(v) for k, v in examples.items()}
    members_flat = tf.constant(np.concatenate(members), tf.int64)
    offsets = tf.constant(np.cumsum([0] + [len(m) for m in members[:-1]]), tf.int64)
    sizes = tf.constant([len(m) for m in members], tf.int64)
    per_batch_t, num_strata = tf.constant(per_batch, tf.int64), len(per_batch)
    row_stratum, row_rank = tf.constant(row_stratum, tf.int64), tf.constant(row_rank, tf.int64)

    def element(k):
        step, row = start_step + k // local, start + k % local
        s = row_stratum[row]
        g_s = step * per_batch_t[s] + row_rank[row]  # Position in stratum s's own stream.
        num = sizes[s]
        key = tf.stack([tf.cast(seed, tf.int64), (g_s // num) * num_strata + s])
        index = members_flat[offsets[s] + tf.random.experimental.index_shuffle(g_s % num, key, num - 1)]
        example = {name: tf.gather(table, index) for name, table in tables.items()}
        example["seed"] = tf.stack([tf.cast(seed, tf.int64), step * global_batch + row])
        return example

    ds = tf.data.Dataset.range(2**62).map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if reader:
        ds = ds.map(reader.decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(local, drop_remainder=True).prefetch(prefetch), reader


def _strata(examples: dict, global_batch: int, composition: tuple[int, ...] | None):
    """The example indices of each stratum and its rows per batch (strata with no rows are dropped)."""
    num = len(next(iter(examples.values())))
    if composition is None:
        return [np.arange(num)], [global_batch]
    if sum(composition) != global_batch or min(composition) < 0:
        raise ValueError(f"batch composition {tuple(composition)} must be non-negative and sum to the "
                         f"global batch {global_batch}")
    if "stratum" not in examples:
        raise ValueError("a batch composition needs a `stratum` column in the examples")
    stratum = examples["stratum"]
    members, per_batch = [], []
    for s, count in enumerate(composition):
        if count:
            index = np.flatnonzero(stratum == s)
            if not len(index):
                raise ValueError(f"batches take {count} rows of stratum {s}, but no example is in it")
            members.append(index)
            per_batch.append(count)
    return members, per_batch


def _spread(per_batch: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """For each row of a global batch: its stratum and its rank within that stratum's rows.

    Rows are interleaved (row r goes to the stratum furthest behind its share r · count / total), so every
    device's shard holds about the same mix.
    """
    total, taken = sum(per_batch), np.zeros(len(per_batch), np.int64)
    stratum, rank = np.zeros(total, np.int64), np.zeros(total, np.int64)
    for r in range(total):
        s = int(np.argmax([(r + 1) * c / total - t for c, t in zip(per_batch, taken)]))
        stratum[r], rank[r] = s, taken[s]
        taken[s] += 1
    return stratum, rank


def train_iterator(examples: dict[str, np.ndarray], *, preprocess: Preprocess, global_batch: int, seed: int,
                   start_step: int, mesh: jax.sharding.Mesh, prefetch: int = 2, image_size: int | None = None,
                   on_error: str = "raise", composition: tuple[int, ...] | None = None) -> Iterator[dict]:
    """Global batches (jax.Arrays sharded over 'data') for steps `start_step, start_step + 1, …`."""
    ds, reader = train_dataset(examples, preprocess=preprocess, global_batch=global_batch, seed=seed,
                               start_step=start_step, rows=parallel.host_rows(global_batch, mesh),
                               prefetch=prefetch, image_size=image_size, on_error=on_error,
                               composition=composition)
    for batch in as_numpy(ds, reader):
        batch.pop("seed", None)
        yield parallel.to_global(batch, mesh)


def eval_batches(examples: dict[str, np.ndarray], *, batch_size: int, preprocess: Preprocess | None = None,
                 image_size: int | None = None, on_error: str = "raise") -> Iterator[dict[str, np.ndarray]]:
    """The whole set in order, in batches padded to `batch_size`; `mask` is 0 on the padding.

    `row` numbers each example in `examples`, so results stay aligned when a streamed bad file is dropped.
    """
    examples, reader = _files(examples, image_size, on_error)
    examples["row"] = np.arange(len(next(iter(examples.values()))), dtype=np.int32)
    ds = tf.data.Dataset.from_tensor_slices(examples)
    if reader:
        ds = reader.readable(ds)
    if preprocess is not None:
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for batch in as_numpy(ds.batch(batch_size), reader):
        size = len(next(iter(batch.values())))
        batch = {k: _pad(v, batch_size) for k, v in batch.items()}
        batch["mask"] = (np.arange(batch_size) < size).astype(np.float32)
        yield batch


def as_numpy(ds: tf.data.Dataset, reader: FileImages | None) -> Iterator[dict[str, np.ndarray]]:
    """`ds` as NumPy, turning a bad streamed file into its `DataError`."""
    iterator = ds.as_numpy_iterator()
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            if reader is None:
                raise
            reader.reraise(e)
        yield batch  # Outside the try: closing the generator at exit must not evaluate `tf.errors`.


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    pad = size - len(x)
    return np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
