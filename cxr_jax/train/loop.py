"""The one training loop every method runs on.

A method object (`train.method.Method`) supplies `train_data()`, `init(rng, batch)`, `train_step(state, batch)`
and the optional hooks (`batch_composition`, `load_pretrained`, `samples`, `read_run`, `write_run`). The loop
owns the rest: mesh, sharded init, the compiled and donated step, the input position, checkpoints, metrics,
non-finite checks, SIGTERM, and evaluation every `eval.every` steps (`train.evaluation`). Metrics stay on device
between log points; dispatch runs at most `MAX_IN_FLIGHT` steps ahead of compute.
"""

from __future__ import annotations

import dataclasses
import pathlib
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from cxr_jax import checkpoint, parallel, registry
from cxr_jax import config as config_lib
from cxr_jax.metrics import MetricWriter
from cxr_jax.train import workdir as workdir_lib
from cxr_jax.train.evaluation import PeriodicEvaluation
from cxr_jax.train.method import Method
from cxr_jax.train.state import TrainState

# Steps dispatched ahead of the device. Two keep it busy; more only delay a SIGTERM's checkpoint (the save waits
# for every dispatched step: with 50 queued 3-second steps, 150 s, past a cloud preemption's 30 s notice).
MAX_IN_FLIGHT = 2


class NonFiniteError(RuntimeError):
    """A loss or gradient norm became NaN or infinite."""


@dataclasses.dataclass
class Setup:
    """What `train`, `evaluate` and `bench` share: the method, the mesh, the data and compiled functions."""

    method: Method
    mesh: jax.sharding.Mesh
    batches: Any  # Iterator of global batches from `start_step` on.
    first_batch: dict
    init_fn: Any
    step_fn: Any
    abstract_state: Any


def setup(config: ml_collections.ConfigDict, start_step: int = 0, *, mesh: jax.sharding.Mesh | None = None,
          method: Method | None = None, run: str | pathlib.Path | None = None) -> Setup:
    """Builds the method, mesh (default: all devices), input iterator and the jitted init and train step.

    `run`: the run directory whose checkpoint the state will be restored from (`registry.build`).
    """
    from cxr_jax.data import pipeline  # TensorFlow: only where data is built (see `train.method`).

    mesh = mesh or parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    method = method or registry.build(config, mesh, run=run)
    examples, preprocess = method.train_data()
    batches = pipeline.train_iterator(examples, preprocess=preprocess, global_batch=config.batch_size,
                                      seed=config.seed, start_step=start_step, mesh=mesh,
                                      prefetch=config.data.prefetch, image_size=config.image_size,
                                      on_error=config.data.train.on_error,
                                      composition=method.batch_composition)
    first = next(batches)
    init_fn, step_fn, abstract = jitted(config, method, mesh, first)
    return Setup(method, mesh, _chain(first, batches), first, init_fn, step_fn, abstract)


def jitted(config: ml_collections.ConfigDict, method: Method, mesh: jax.sharding.Mesh, batch) -> tuple[Any, Any, Any]:
    """`method.init` and `method.train_step` jitted for `mesh`, and the abstract state for batches like `batch`.

    The state is replicated and donated to the step, the batch sharded over 'data'. What `setup` builds once it
    has a first batch; without data, e.g. on a `Method.synthetic_batch` (`benchmarks/accelerator.py`).
    """
    replicated = parallel.replicated(mesh)
    rng = jax.random.key(config.seed)
    abstract = checkpoint.abstract_like(jax.eval_shape(method.init, rng, batch), replicated)
    init_fn = jax.jit(method.init, out_shardings=replicated)
    step_fn = jax.jit(method.train_step, in_shardings=(replicated, parallel.batch_sharding(mesh)),
                      out_shardings=(replicated, replicated), donate_argnums=0,
                      compiler_options=parallel.compiler_options(mesh, ynn_fusions=config.train.cpu_ynn_fusions))
    return init_fn, step_fn, abstract


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> TrainState:
    """Trains until `config.train.num_steps`, resuming from the latest checkpoint in `workdir`.

    Every `eval.every` steps the state is evaluated and checkpointed with its metrics; the checkpoint with the
    best `eval.best_metric` is kept beside the latest `train.keep_checkpoints`.

    One `train` per workdir at a time (`W/train.lock`), and a resume refuses a config that changes the model,
    optimizer or data order unless `allow_changes` (`train/workdir.py`); both before anything is written.
    """
    with workdir_lib.claim(config, workdir):  # Released however `_train` ends (a kept traceback holds no lock).
        return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> TrainState:
    """`train` with the workdir claimed."""
    workdir = pathlib.Path(workdir)
    lead = jax.process_index() == 0
    if lead:
        workdir.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints,
                                   best_metric=config.eval.best_metric, best_mode=config.eval.best_mode)
    start_step = ckpt.latest_step() or 0
    # The method reads what the run it restores wrote (`Method.read_run`): this one's on a resume, else init_from's.
    s = setup(config, start_step, run=workdir if start_step else config.init_from)
    state, start_step, s = _initial_state(config, s, ckpt, start_step)
    if lead:  # Only once the state is there: a start that fails leaves the run's config as it was.
        s.method.write_run(workdir)
        (workdir / "config.json").write_text(config_lib.to_json(config))
    t0 = time.perf_counter()
    if start_step < config.train.num_steps:  # A finished run's rerun compiles nothing (a minute for ConVIRT).
        step_fn = s.step_fn.lower(state, s.first_batch).compile()
    compile_time = time.perf_counter() - t0
    jax.block_until_ready(state)
    writer = MetricWriter(workdir, start_step=start_step, num_steps=config.train.num_steps, enabled=lead,
                          shown=s.method.key_metrics)
    evaluation = PeriodicEvaluation(config, s.method, s.mesh, workdir, writer)
    stop = _SigtermFlag()
    pending: list[tuple[int, dict]] = []
    last_flush, last_flush_step = time.perf_counter(), start_step
    try:
        for step in range(start_step + 1, config.train.num_steps + 1):
            state, metrics = step_fn(state, next(s.batches))
            pending.append((step, metrics))
            wait_for_all_but(pending, MAX_IN_FLIGHT)
            stopping, evaluating = stop.is_set(step, config), evaluation.due(step)
            save = step % config.train.checkpoint_every == 0 or step == config.train.num_steps or stopping or evaluating
            if save or step % config.train.log_every == 0:
                fetched = jax.device_get(pending)  # Waits for the steps to finish: timing is honest.
                now = time.perf_counter()
                timing = {"step_time": (now - last_flush) / (step - last_flush_step),
                          "examples_per_sec": config.batch_size * (step - last_flush_step) / (now - last_flush),
                          "compile_time": compile_time}
                _flush(fetched, writer, config, timing, ckpt)
                pending, last_flush, last_flush_step = [], now, step
            scores = None
            if evaluating:  # Before `state` is donated to the next step; step times leave the evaluation out.
                scores, last_flush = _evaluate_or_save(evaluation, step, state, ckpt, config), time.perf_counter()
            if save:
                ckpt.save(step, state, _meta(step, config), scores)
            if stopping:
                ckpt.wait()
                raise Preempted(step)
        ckpt.wait()  # A failed background save surfaces here, as a WriteError.
    except OSError as e:  # Disk full, permissions, a vanished mount: nothing written so far is lost.
        raise WriteError(e, ckpt) from e
    finally:
        stop.restore()
        writer.close()
        ckpt.close()
    return state


def _evaluate_or_save(evaluation: PeriodicEvaluation, step: int, state, ckpt: checkpoint.Checkpointer, config):
    """`evaluation(step, state)`; if it fails, the steps since the last checkpoint are saved before it re-raises.

    A bad eval set or a bug in an evaluator then costs a rerun of the evaluation, not of the training.
    """
    try:
        return evaluation(step, state)
    except BaseException:
        ckpt.save(step, state, _meta(step, config))
        ckpt.wait()
        raise


class WriteError(RuntimeError):
    """A checkpoint, metrics or evaluation file could not be written; the run stopped."""

    def __init__(self, error: OSError, ckpt: checkpoint.Checkpointer):
        step = ckpt.committed_step()
        kept = f"the checkpoint of step {step} is intact" if step else "no checkpoint was written yet"
        super().__init__(f"could not write {error.filename or 'a file'}: {error.strerror or error}; stopped, {kept} "
                         f"under {ckpt.directory}. Fix the cause and rerun the same command to resume")


class Preempted(RuntimeError):
    """SIGTERM arrived; a checkpoint at `step` was saved. Rerunning the same command resumes."""

    def __init__(self, step: int):
        super().__init__(f"stopped by SIGTERM after step {step}; checkpoint saved, rerun the same command "
                         "to resume")
        self.step = step


def _initial_state(config, s: Setup, ckpt: checkpoint.Checkpointer, start_step: int) -> tuple[Any, int, Setup]:
    """(state, its step, setup): this run's newest readable checkpoint, or a fresh (or `init_from`) state.

    A damaged latest checkpoint is moved aside (`Checkpointer.restore_newest`); resuming from an earlier one
    rebuilds the input stream at that step.
    """
    if start_step:
        state, meta, step = ckpt.restore_newest(s.abstract_state)
        if meta["batch_size"] != config.batch_size or meta["seed"] != config.seed:
            raise ValueError(f"{ckpt.directory}: checkpoint was written with batch_size={meta['batch_size']}, "
                             f"seed={meta['seed']}; resuming with batch_size={config.batch_size}, "
                             f"seed={config.seed} would change the input order")
        if step != start_step:
            s = setup(config, step, mesh=s.mesh, method=s.method)
        return state, step, s
    state = s.init_fn(jax.random.key(config.seed), s.first_batch)
    state = s.method.load_pretrained(state)
    if config.init_from:
        other = checkpoint.Checkpointer(pathlib.Path(config.init_from) / "checkpoints", read_only=True)
        step = other.latest_step()
        if step is None:
            raise ValueError(f"init_from={config.init_from!r}: no checkpoint under {other.directory}")
        source, _ = other.restore(step, s.abstract_state)
        state = state.replace(params=source.params, model_state=source.model_state)
        other.close()
    return state, 0, s


def wait_for_all_but(pending: list[tuple[int, Any]], num: int) -> None:
    """Blocks until every `(step, outputs)` in `pending` but the last `num` has been computed."""
    if len(pending) > num:
        jax.block_until_ready(pending[-1 - num][1])


def _flush(fetched, writer: MetricWriter, config, timing: dict, ckpt: checkpoint.Checkpointer) -> None:
    """Stops on non-finite values among the fetched `(step, metrics)`, logs the log steps."""
    for step, metrics in fetched:
        for key, value in metrics.items():
            if (key.endswith("loss") or key.endswith("grad_norm")) and not np.all(np.isfinite(value)):
                raise NonFiniteError(f"{key} = {value} at step {step}; stopping. The last good checkpoint "
                                     f"(step {ckpt.latest_step()}) is kept under {ckpt.directory}")
        if step % config.train.log_every == 0 or step == config.train.num_steps:
            writer.write(step, {**metrics, **timing})


def _meta(step: int, config) -> dict[str, Any]:
    """The input position: the stream is a function of (seed, batch_size, step) only."""
    return {"step": step, "batch_size": config.batch_size, "seed": config.seed,
            "examples_seen": step * config.batch_size}


def _chain(first, rest):
    yield first
    yield from rest


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop checks, so it can save before exiting."""

    def __init__(self):
        self._set = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self._set = True

    def is_set(self, step: int, config) -> bool:
        """Whether to stop after `step`; with several hosts they agree at log points."""
        if jax.process_count() == 1:
            return self._set
        if step % config.train.log_every:
            return False
        flags = multihost_utils.process_allgather(np.asarray(self._set))
        return bool(np.any(flags))

    def restore(self) -> None:
        """Reinstates the previous handler."""
        signal.signal(signal.SIGTERM, self._previous)

