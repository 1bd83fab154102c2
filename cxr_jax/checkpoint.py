"""Orbax checkpoints of the train state plus a JSON record of the input position.

Orbax writes each step to a temporary directory and renames it when complete, so a run killed at any
moment leaves only whole checkpoints behind; `latest_step` never sees a partial one.

A checkpoint saved by an evaluation during training also holds that evaluation's metrics (Orbax's `metrics`
item). With a `best_metric`, the one with the best value is kept beside the latest `keep` ones (Orbax's
preservation policies), and `resolve('best')` finds it; both rank by the same key, so the step `best` names
is the one the policy kept, before and after a resume.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp

BEST_MODES = ("max", "min")


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
        """Restores into the structure, dtypes and shardings of `abstract_state` (ShapeDtypeStructs)."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        try:
            restored = self._manager.restore(step, args=args)
        except (ValueError, KeyError) as e:
            raise ValueError(f"checkpoint {self.directory / str(step)} does not match this config's model "
                             f"and optimizer: {e}") from e
        return restored.state, restored.meta

    def wait(self) -> None:
        """Blocks until pending saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.close()


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
