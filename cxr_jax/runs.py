"""A trained run: restore its config and a checkpoint's state, predict over whole sets, evaluate it.

Commands and evaluators that work on a run directory (`evaluate`, `decompose`, `landmarks`, `segment`,
`retrieve`, transfer between runs) go through here, so a checkpoint is chosen the same way everywhere:
`latest`, `best` (the step evaluation during training kept, see `train.loop`) or a step number.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from cxr_jax import checkpoint, metrics, parallel, registry
from cxr_jax import config as config_lib
from cxr_jax.data import pipeline
from cxr_jax.train.method import Method


def restore_run(workdir: str | pathlib.Path, method: str, *, needed: str, mesh, config=None,
                which: str | int = "latest") -> tuple:
    """(config, method object, state, step) of a trained run that must be of `method`.

    `config` defaults to the run's own (`WORKDIR/config.json`); `needed` names the run in the error, e.g.
    "a segmenter run (configs/segment.py)".
    """
    config = config or config_lib.load_run(workdir)
    if config.method != method:
        raise config_lib.ConfigError(f"{workdir} was trained with method {config.method!r}; {needed} is needed")
    return (config, *restore_method(config, workdir, mesh, which=which))


def restore_method(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, mesh, *,
                   which: str | int = "latest") -> tuple[Method, object, int]:
    """The config's method object, built for the run (`Method.read_run`), and its state and step at `which`."""
    parallel.check_batch_size(config.batch_size, mesh)
    method = registry.build(config, mesh, run=workdir)
    blank = np.zeros((config.batch_size, config.image_size, config.image_size, 1), np.uint8)
    batch = next(pipeline.eval_batches({"image": blank}, batch_size=config.batch_size,
                                       preprocess=method.preprocess_eval))  # Only the shapes matter here.
    del batch["mask"], batch["row"]
    state, step = restore_state(workdir, method, batch, mesh, which=which)
    return method, state, step


def restore_state(workdir: str | pathlib.Path, method: Method, batch: dict, mesh, *,
                  which: str | int = "latest") -> tuple[object, int]:
    """A checkpoint's state of a run (structure from `method.init` on `batch`) and its step.

    `which` is 'latest', 'best' (the evaluated checkpoint with the best `eval.best_metric` of the method's
    config, by default the one the run was trained with) or a step number. 'latest' is the newest checkpoint
    that restores: damaged ones are moved aside (`Checkpointer.restore_newest`).
    """
    ckpt = checkpoint.Checkpointer(pathlib.Path(workdir) / "checkpoints", read_only=True,
                                   best_metric=method.config.eval.best_metric, best_mode=method.config.eval.best_mode)
    try:
        step = ckpt.resolve(which)
        batch = parallel.from_full(batch, mesh)
        abstract = checkpoint.abstract_like(jax.eval_shape(method.init, jax.random.key(0), batch),
                                            parallel.replicated(mesh))
        if which == "latest":
            state, _, step = ckpt.restore_newest(abstract)
        else:
            state, _ = ckpt.restore(step, abstract)
    finally:
        ckpt.close()
    return state, step


def restore_latest(workdir: str | pathlib.Path, method: Method, batch: dict, mesh) -> tuple[object, int]:
    """The latest checkpoint's state and step (`restore_state` with `which='latest'`)."""
    return restore_state(workdir, method, batch, mesh)


def predict(method: Method, state, examples: dict[str, np.ndarray], mesh, *, fn: Callable | None = None,
            preprocess: Callable | None | str = "eval", on_error: str = "raise") -> tuple[np.ndarray, np.ndarray]:
    """`fn(state, batch)` (default `method.predict`) over every example in order; NumPy on every host.

    Batches have the method's batch size; `preprocess` defaults to `method.preprocess_eval` (None: the
    examples are model inputs already). Returns the outputs, padding removed, and the rows of `examples` they
    belong to (all rows, unless streamed bad files were skipped with `on_error='skip'`). Streamed examples
    (`file` instead of `image`) are read at the method's image size.
    """
    fn = fn or method.predict
    preprocess = method.preprocess_eval if preprocess == "eval" else preprocess
    jitted = _jit(method, fn, mesh)
    outputs, rows = [], []
    for batch in pipeline.eval_batches(examples, batch_size=method.config.batch_size, preprocess=preprocess,
                                       image_size=method.config.image_size, on_error=on_error):
        mask = batch.pop("mask") > 0
        rows.append(batch.pop("row")[mask])
        out = jax.device_get(jitted(state, parallel.from_full(batch, mesh)))
        outputs.append(jax.tree.map(lambda x, m=mask: x[m], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs), np.concatenate(rows)


def _jit(method: Method, fn: Callable, mesh):
    """`fn` jitted on the mesh; the method's own bound functions compile once per method object and mesh.

    Other callables (e.g. a `functools.partial` holding a template's keys) compile per call: caching them
    globally would keep every one, and the arrays it holds, alive.
    """
    def compile_():
        return jax.jit(fn, in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                       out_shardings=parallel.replicated(mesh))

    if getattr(fn, "__self__", None) is not method:
        return compile_()
    cache, key = vars(method).setdefault("_jitted", {}), (fn.__func__, mesh)
    if key not in cache:
        cache[key] = compile_()
    return cache[key]


def evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
             which: str | int = "latest") -> dict[str, float]:
    """Evaluates checkpoint `which`; writes `W/eval/metrics.json` (flat, named numbers) and figures."""
    mesh = parallel.make_mesh()
    method, state, step = restore_method(config, workdir, mesh, which=which)
    outdir = pathlib.Path(workdir) / "eval"
    outdir.mkdir(parents=True, exist_ok=True)
    result = {"step": float(step), **method.evaluate(state, mesh, outdir)}
    if jax.process_index() == 0:
        clean = metrics.finite_or_none(result)
        (outdir / "metrics.json").write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
    return result

