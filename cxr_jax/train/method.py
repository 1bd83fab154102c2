"""What a method provides: the contract between a method's trainer and the shared loop, runs and commands.

A method is a class built from `(config, mesh)` (`registry.build`). The loop calls `train_data`, `init`,
`train_step` and the optional hooks (and, every `eval.every` steps, `evaluate` and `samples`); `runs` calls
`preprocess_eval`, `predict` and `evaluate`.

A run directory may hold more than the config and checkpoints: what the model's shapes depend on but the config
does not fix (ConVIRT's vocabulary, trained on a corpus). `write_run` puts it there when training starts and
`read_run` takes it back whenever a method object serves an existing run, so every later command builds the
model the run was trained with.

TensorFlow belongs to the data side (`cxr_jax/data`: tf.data and the augmentations): a trainer imports it inside
`train_data` and the preprocessing functions only, so building a method, `init` and `train_step` run where
TensorFlow is not installed (an accelerator benchmarked on `synthetic_batch`es).
"""

from __future__ import annotations

import abc
import functools
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from cxr_jax.data import sources
from cxr_jax.train.state import TrainState

# How many of `data.eval`'s first images the `samples` hooks draw.
NUM_SAMPLES = 4


class Method(abc.ABC):
    """Base class of every method's trainer; subclasses set `self.config` in `__init__(config, mesh)`."""

    config: ml_collections.ConfigDict
    # Optional hook: rows per `stratum` value in every batch (see `pipeline.train_dataset`); None: any mix.
    batch_composition: dict[int, int] | None = None
    # Optional: the `train_step` metrics worth watching, shown in the progress bar and `train`'s closing line
    # (the loss and two or three more); every metric still goes to metrics.jsonl and TensorBoard.
    key_metrics: tuple[str, ...] = ("loss",)

    @abc.abstractmethod
    def train_data(self) -> tuple[dict[str, np.ndarray], Callable]:
        """The training examples (arrays, or `file` paths to stream) and the per-example tf.data preprocessing."""

    @abc.abstractmethod
    def init(self, rng: jax.Array, batch: dict) -> TrainState:
        """A fresh state for batches shaped like `batch` (traced under `jax.eval_shape` and `jax.jit`)."""

    @abc.abstractmethod
    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimisation step on a global batch: the new state and scalar metrics."""

    def preprocess_eval(self, example: dict) -> dict:
        """The tf.data preprocessing of one evaluation example, no augmentation (default: [-1, 1] float images)."""
        from cxr_jax.data import augment  # TensorFlow: imported where data is built, never to build a step.

        return augment.float_image(example)

    @abc.abstractmethod
    def evaluate(self, state: TrainState, mesh: jax.sharding.Mesh, outdir: pathlib.Path) -> dict[str, float]:
        """The method's named metrics on `config.data.eval`, with figures written to `outdir`."""

    def synthetic_batch(self, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Optional hook: a global batch of random values, keys, shapes and dtypes as `train_data` gives them.

        For timing `train_step` where neither the data nor TensorFlow is at hand (`benchmarks/accelerator.py`);
        the values only need to be valid inputs (labels in range, token ids in the vocabulary).
        """
        raise NotImplementedError(f"{type(self).__name__} has no synthetic batch")

    def predict(self, state: TrainState, batch: dict) -> Any:
        """The model's outputs for an evaluation batch (what `runs.predict` maps by default)."""
        raise NotImplementedError(f"{type(self).__name__} has no default prediction; pass `fn` to runs.predict")

    def read_run(self, workdir: pathlib.Path) -> None:
        """Optional hook: adopt what run `workdir` wrote with `write_run` (default: nothing to read).

        Called once by `registry.build`, right after construction and before anything else, when the object
        will restore that run's checkpoints: a resume, `init_from`'s source, `evaluate` and the commands on a run
        (`runs.restore_method`). A file the run lacks (a run trained before the hook wrote it) is no error.
        """
        del workdir

    def write_run(self, workdir: pathlib.Path) -> None:
        """Optional hook: write what later commands need besides the config and checkpoints (default: nothing).

        Called by the training loop on process 0 when a run starts or resumes, once its state is restored and
        before any checkpoint is written. Write atomically: a file half written must never be seen.
        """
        del workdir

    def load_pretrained(self, state: TrainState) -> TrainState:
        """Optional hook: a fresh state with pretrained weights imported (default: unchanged)."""
        return state

    def samples(self, state: TrainState, mesh: jax.sharding.Mesh) -> np.ndarray | None:
        """Optional hook: a small picture of what the model does now (uint8 RGB [H, W, 3]), or None (default).

        Drawn at every evaluation during training (`eval.every`), so a run can be watched in TensorBoard
        beside its numbers. Runs on every host (it may predict on the mesh); only the lead host writes it.
        """
        del state, mesh
        return None

    @functools.cached_property
    def sample_examples(self) -> dict[str, np.ndarray]:
        """The first `NUM_SAMPLES` examples of `data.eval`, images in memory: the same ones at every evaluation."""
        config = self.config
        return sources.head(config.data.eval, NUM_SAMPLES, image_size=config.image_size, seed=config.seed)
