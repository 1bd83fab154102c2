"""Shared evaluation helpers: restore the latest state, predict over a whole set on the mesh, AUC intervals."""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Callable

import jax
import numpy as np

from cxr_jax import checkpoint, parallel
from cxr_jax import config as config_lib
from cxr_jax.data import pipeline


def restore_run(workdir: str | pathlib.Path, method: str, *, needed: str, mesh, config=None) -> tuple:
    """(config, method object, state, step) of a trained run that must be of `method`.

    `config` defaults to the run's own (`WORKDIR/config.json`); `needed` names the run in the error, e.g.
    "a segmenter run (configs/segment.py)".
    """
    config = config or config_lib.load_run(workdir)
    if config.method != method:
        raise config_lib.ConfigError(f"{workdir} was trained with method {config.method!r}; {needed} is needed")
    return (config, *restore_method(config, workdir, mesh))


def restore_method(config, workdir: str | pathlib.Path, mesh) -> tuple:
    """The config's method object and the run's latest state and step."""
    from cxr_jax.methods import METHODS

    parallel.check_batch_size(config.batch_size, mesh)
    method = METHODS[config.method](config, mesh)
    blank = np.zeros((config.batch_size, config.image_size, config.image_size, 1), np.uint8)
    batch = next(pipeline.eval_batches({"image": blank}, batch_size=config.batch_size,
                                       preprocess=method.preprocess_eval))  # Only the shapes matter here.
    del batch["mask"], batch["row"]
    state, step = restore_latest(workdir, method, batch, mesh)
    return method, state, step


def restore_latest(workdir: str | pathlib.Path, method, batch: dict, mesh) -> tuple:
    """The latest checkpoint's state of a run (structure from `method.init` on `batch`)."""
    ckpt = checkpoint.Checkpointer(pathlib.Path(workdir) / "checkpoints", read_only=True)
    step = ckpt.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {ckpt.directory}; train first")
    batch = parallel.from_full(batch, mesh)
    abstract = jax.eval_shape(method.init, jax.random.key(0), batch)
    state, _ = ckpt.restore(step, checkpoint.abstract_like(abstract, parallel.replicated(mesh)))
    ckpt.close()
    return state, step


def predict(fn: Callable, state, examples: dict[str, np.ndarray], *, preprocess, batch_size: int, mesh,
            image_size: int | None = None, on_error: str = "raise") -> tuple[np.ndarray, np.ndarray]:
    """`fn(state, batch)` over every example in order, padding removed; NumPy on every host.

    Returns the outputs and the rows of `examples` they belong to (all rows, unless streamed bad files were
    skipped). `image_size` and `on_error` apply to streamed examples (`file` instead of `image`).
    """
    jitted = _jit(fn, mesh)
    outputs, rows = [], []
    for batch in pipeline.eval_batches(examples, batch_size=batch_size, preprocess=preprocess,
                                       image_size=image_size, on_error=on_error):
        mask = batch.pop("mask") > 0
        rows.append(batch.pop("row")[mask])
        out = jax.device_get(jitted(state, parallel.from_full(batch, mesh)))
        outputs.append(jax.tree.map(lambda x, m=mask: x[m], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs), np.concatenate(rows)


@functools.cache
def _jit(fn, mesh):
    return jax.jit(fn, in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                   out_shardings=parallel.replicated(mesh))


def grouped_bootstrap_aucs(*, labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, num_resamples: int,
                           seed: int) -> np.ndarray:
    """AUCs [num_resamples, R] of R score vectors [R, N], all on the same resamples of groups.

    Each resample draws the groups with replacement; an image counts as often as its group was drawn, so an AUC
    is the weighted Mann–Whitney statistic Σ w_i w_j [s_i > s_j] (ties ½) / (W_pos W_neg) over positive i and
    negative j. NaN for a resample without both classes.
    """
    labels = np.asarray(labels) > 0
    scores = np.atleast_2d(np.asarray(scores, np.float64))
    _, group_of = np.unique(np.asarray(groups), return_inverse=True)
    num_groups = group_of.max() + 1
    draws = np.random.default_rng(seed).integers(0, num_groups, (num_resamples, num_groups))
    counts = np.zeros((num_resamples, num_groups))
    np.add.at(counts, (np.arange(num_resamples)[:, None], draws), 1.0)
    weights = counts[:, group_of]  # [B, N]
    w_pos, w_neg = weights[:, labels], weights[:, ~labels]
    with np.errstate(invalid="ignore"):
        total = w_pos.sum(1) * w_neg.sum(1)
        aucs = []
        for s in scores:
            pos, neg = s[labels][:, None], s[~labels][None]
            wins = (pos > neg) + 0.5 * (pos == neg)
            aucs.append(np.einsum("bp,pn,bn->b", w_pos, wins, w_neg) / total)
    return np.stack(aucs, axis=1)


def auc_interval(*, labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, cfg) -> tuple[float, float]:
    """The 95 % patient-bootstrap interval of one score vector's AUC (`cfg`: num_resamples, seed).

    NaN, NaN when `labels` hold one class, like the AUC itself (no resample could have two).
    """
    if len(np.unique(labels)) < 2:
        return float("nan"), float("nan")
    aucs = grouped_bootstrap_aucs(labels=labels, scores=scores[None], groups=groups,
                                  num_resamples=cfg.num_resamples, seed=cfg.seed)[:, 0]
    low, high = np.nanpercentile(aucs, [2.5, 97.5])
    return float(low), float(high)
