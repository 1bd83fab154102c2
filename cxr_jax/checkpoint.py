"""Orbax checkpoints of the train state plus a JSON record of the input position.

Orbax writes each step to a temporary directory and renames it when complete, so a run killed at any
moment leaves only whole checkpoints behind; `latest_step` never sees a partial one.

A checkpoint saved by an evaluation during training also holds that evaluation's metrics (Orbax's `metrics`
item). With a `best_metric`, the one with the best value is kept beside the latest `keep` ones (Orbax's
preservation policies), and `resolve('best')` finds it; both rank by the same key, so the step `best` names
is the one the policy kept, before and after a resume.
"""

from __future__ import annotations

import logging
import math
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp

from cxr_jax.config import ConfigError

BEST_MODES = ("max", "min")
log = logging.getLogger(__name__)


class MismatchError(ConfigError):
    """An intact checkpoint holds another model than the config describes (a config change, not damage).

    A ConfigError, so every command reports it in one line (exit 2) instead of Orbax's shape traceback.
    """

    def __init__(self, path: pathlib.Path, detail: str):
        super().__init__(f"checkpoint {path} does not match this config's model and optimizer: "
                         f"{' '.join(str(detail).split())}")


class Checkpointer:
    """Keeps the last `keep` checkpoints of a run under `directory`, and the best by `best_metric` if given."""

    def __init__(self, directory: str | pathlib.Path, keep: int = 3, read_only: bool = False, *,
                 best_metric: str = "", best_mode: str = "max"):
        if best_mode not in BEST_MODES:
            raise ValueError(f"best_mode must be one of {BEST_MODES}; got {best_mode!r}")
        self.directory = pathlib.Path(directory).absolute()
        self.best_metric, self.best_mode = best_metric, best_mode
        self._rank = metric_rank(best_metric, best_mode) if best_metric else None
        options = dict(create=not read_only, read_only=read_only)
        if self._rank is None:
            options["max_to_keep"] = keep
        else:  # best_fn makes Orbax write the metrics item (and is how it ranks them).
            options.update(best_fn=self._rank, best_mode="max", preservation_policy=_latest_and_best(keep, self._rank))
        self._manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(**options))

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def committed_step(self) -> int | None:
        """The newest checkpoint complete on disk (re-read: after a failed save, not the one that failed)."""
        self._manager.reload()
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The step of the checkpoint with the best `best_metric` (the later one on ties), or None.

        Checkpoints saved between evaluations (no or empty metrics) and values that are missing or not finite
        never count as best.
        """
        if self._rank is None:
            return None
        ranked = []
        for step in self._manager.all_steps():
            metrics = self._manager.metrics(step)
            if metrics is not None and math.isfinite(self._rank(metrics)):
                ranked.append((self._rank(metrics), step))
        return max(ranked)[1] if ranked else None

    def resolve(self, which: str | int) -> int:
        """The step of checkpoint `which`: 'latest', 'best' or a step number (as int or digits)."""
        steps = self._manager.all_steps()
        if which == "latest":
            if not steps:
                raise FileNotFoundError(f"no checkpoint under {self.directory}; train first")
            return max(steps)
        if which == "best":
            return self._resolve_best()
        if isinstance(which, int) or str(which).isdigit():
            if int(which) not in steps:
                raise FileNotFoundError(f"no checkpoint of step {which} under {self.directory}; there are "
                                        f"{sorted(steps) or 'none'}")
            return int(which)
        raise ValueError(f"checkpoint {which!r}: expected 'latest', 'best' or a step number")

    def _resolve_best(self) -> int:
        if not self.best_metric:
            raise FileNotFoundError(f"no best checkpoint under {self.directory}: eval.best_metric is empty, so no "
                                    "step is ranked; use latest or a step number")
        step = self.best_step()
        if step is None:
            raise FileNotFoundError(f"no evaluated checkpoint with a finite {self.best_metric} under {self.directory}"
                                    f": 'best' needs a run trained with eval.every > 0; there are "
                                    f"{sorted(self._manager.all_steps()) or 'no checkpoints'}")
        return step

    def save(self, step: int, state: Any, meta: dict[str, Any], metrics: dict[str, float | None] | None = None) -> None:
        """Saves asynchronously; the arrays are copied off the devices before this returns.

        `metrics` (strict JSON: no NaN) are an evaluation's at this step; they rank the checkpoint for 'best'.
        Other checkpoints of a run that ranks get empty metrics, which never rank (and keep Orbax from warning).
        """
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._manager.save(step, args=args, metrics=(metrics or {}) if self._rank is not None else None, force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restores into the structure, dtypes and shardings of `abstract_state` (ShapeDtypeStructs).

        Raises `MismatchError` if the checkpoint holds other paths, shapes or dtypes (checked before Orbax reads).
        """
        self._check_fits(step, abstract_state)
        return self._restore(step, abstract_state)

    def _restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        try:
            restored = self._manager.restore(step, args=args)
        except (ValueError, KeyError) as e:
            raise MismatchError(self.directory / str(step), str(e)) from e
        return restored.state, restored.meta

    def _check_fits(self, step: int, abstract_state: Any) -> None:
        """Raises `MismatchError` naming the first differences if checkpoint `step` cannot hold `abstract_state`."""
        mismatch = self._mismatch(step, abstract_state)
        if mismatch:
            raise MismatchError(self.directory / str(step), mismatch)

    def restore_newest(self, abstract_state: Any) -> tuple[Any, dict[str, Any], int] | None:
        """(state, meta, step) of the newest checkpoint that restores; None if there is none at all.

        A checkpoint whose files are damaged (truncated, deleted, garbled: a preempted VM, a flaky bucket) is
        moved aside to `STEP.corrupt`, never deleted, with a one-line warning, and the previous one is tried.
        One that is intact but holds another model is an error (`MismatchError`): that is a config change, not
        damage. Raises FileNotFoundError if checkpoints exist and none restores.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        for step in steps:
            self._check_fits(step, abstract_state)  # Before Orbax tries (and logs its failures).
            _quiet_failed_reads()
            try:
                return (*self._restore(step, abstract_state), step)
            except Exception as e:  # TensorStore raises bare Exceptions for unreadable data.
                self._move_aside(step, e)
        if steps:
            raise FileNotFoundError(f"no checkpoint under {self.directory} could be restored; the damaged ones "
                                    f"were moved aside as {', '.join(f'{s}.corrupt' for s in steps)}")
        return None

    def _mismatch(self, step: int, abstract_state: Any) -> str | None:
        """How the stored tree differs from `abstract_state` (paths, shapes, dtypes), or None.

        None if it fits, or if its metadata is unreadable: then the data, not the model, is at fault.
        """
        try:
            stored = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")
        except Exception:  # Unreadable metadata is damage, not a different model.
            return None
        have, want = _shapes_by_path(stored), _shapes_by_path(abstract_state)
        diffs = [f"{k} missing" for k in sorted(want.keys() - have.keys())]
        diffs += [f"{k} unexpected" for k in sorted(have.keys() - want.keys())]
        diffs += [f"{k} {have[k]} vs {want[k]}" for k in sorted(want.keys() & have.keys()) if have[k] != want[k]]
        return None if not diffs else "; ".join(diffs[:3]) + (f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else "")

    def _move_aside(self, step: int, error: Exception) -> None:
        """Renames a damaged checkpoint to `STEP.corrupt` (lead host only) and forgets it."""
        source = self.directory / str(step)
        target = source.with_name(f"{step}.corrupt")
        for n in range(1, 100):
            if not target.exists():
                break
            target = source.with_name(f"{step}.corrupt.{n}")
        reason = " ".join(str(error).split(" See full TensorStore details")[0].split())[:160]
        if jax.process_index() == 0:
            source.rename(target)
        log.warning("checkpoint %s could not be restored (%s: %s); moved to %s, trying the previous one", source,
                    type(error).__name__, reason, target.name)
        self._manager.reload()

    def wait(self) -> None:
        """Blocks until pending saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.close()


def _quiet_failed_reads() -> None:
    """Silences the debris of failed Orbax reads for the rest of the process; it would bury the warning.

    When TensorStore fails to read an array, Orbax's async restore leaves callbacks that later fire at a
    closed event loop (each printed as a traceback, ~180 for a smoke model, some at exit), read coroutines
    that raise when collected, and futures whose exception nobody retrieves (logged by asyncio when
    collected). Only those are dropped.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_cxr_quiet", False):
        return

    def hook(unraisable):
        text = str(unraisable.exc_value)
        if not ("Event loop is closed" in text or "error while reading array" in text):
            previous(unraisable)

    def unretrieved_read(record: logging.LogRecord) -> bool:
        exception = record.exc_info[1] if record.exc_info else None
        text = f"{record.getMessage()} {exception}"
        return not ("exception was never retrieved" in text and "error while reading array" in text)

    hook._cxr_quiet = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(unretrieved_read)


def _shapes_by_path(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """'a/b/c' → (shape, dtype) of each leaf; dataclass fields and dict keys spelled alike."""
    def name(entry) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                return str(getattr(entry, attr))
        return str(entry)

    return {"/".join(map(name, path)): (tuple(leaf.shape), str(leaf.dtype))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _latest_and_best(keep: int, rank: Callable[[dict], float]):
    """Keep the latest `keep` checkpoints and the one evaluated checkpoint with the highest `rank`."""
    policies = ocp.checkpoint_managers
    best = policies.BestN(get_metric_fn=rank, n=1, keep_checkpoints_without_metrics=False)
    return policies.AnyPreservationPolicy([policies.LatestN(keep), best])


def metric_rank(name: str, mode: str) -> Callable[[dict], float]:
    """Metrics dict → a number that is larger for better `name` (negated for 'min'); −inf if absent or NaN.

    Orbax sorts by it and `best_step` takes its maximum, so a failed evaluation (NaN, None) is never best.
    """
    sign = 1.0 if mode == "max" else -1.0

    def rank(metrics: dict) -> float:
        value = metrics.get(name) if isinstance(metrics, dict) else None
        if value is None or not math.isfinite(float(value)):
            return -math.inf
        return sign * float(value)

    return rank


def abstract_like(tree: Any, sharding: Any) -> Any:
    """ShapeDtypeStructs of `tree` (arrays or structs) placed with `sharding` (one for all leaves)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
