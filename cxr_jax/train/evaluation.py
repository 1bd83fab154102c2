"""Evaluation during training: every `eval.every` steps, the loop's own state scored on `data.eval`.

The loop calls this between a step and the next, before the state is donated again, so evaluation needs no
checkpoint round trip and no second compile of the train step (the evaluator's own functions compile once per
method object). Each evaluation appends `{"step": …, metric: value, …}` to `W/eval/history.jsonl`, writes the
scalars to TensorBoard under `eval/` and the method's sample images (`Method.samples`), and returns the metrics
the checkpoint of that step is saved with, which rank it for the best checkpoint (`checkpoint.Checkpointer`).
Figures the evaluator draws go to `W/eval/`, overwritten by each evaluation.
"""

from __future__ import annotations

import pathlib

import jax
import ml_collections

from cxr_jax.config import ConfigError
from cxr_jax.metrics import MetricWriter, finite_or_none
from cxr_jax.train.method import Method


class PeriodicEvaluation:
    """`due(step)` says whether to evaluate after `step`; calling it evaluates and records the result."""

    def __init__(self, config: ml_collections.ConfigDict, method: Method, mesh: jax.sharding.Mesh,
                 workdir: str | pathlib.Path, writer: MetricWriter):
        self.every = config.eval.every
        self.best_metric = config.eval.best_metric
        self.method, self.mesh, self.writer = method, mesh, writer
        self.outdir = pathlib.Path(workdir) / "eval"

    def due(self, step: int) -> bool:
        """Whether `step` is an evaluation step (a multiple of `eval.every`)."""
        return self.every > 0 and step % self.every == 0

    def __call__(self, step: int, state) -> dict[str, float | None]:
        """Evaluates `state` (the state after `step`) on every host; the lead host records it.

        Returns the metrics as strict JSON (non-finite values as None) for the checkpoint of `step`.
        Raises ConfigError if `eval.best_metric` is not among the evaluator's metrics, at the first evaluation
        rather than leaving a run that can never say which step was best.
        """
        self.outdir.mkdir(parents=True, exist_ok=True)
        metrics = {k: float(v) for k, v in self.method.evaluate(state, self.mesh, self.outdir).items()}
        if self.best_metric and self.best_metric not in metrics:
            raise ConfigError(f"eval.best_metric={self.best_metric!r} is not one of {type(self.method).__name__}'s "
                              f"evaluation metrics: {', '.join(sorted(metrics))}")
        self.writer.write_eval(step, metrics)
        image = self.method.samples(state, self.mesh)
        if image is not None:
            self.writer.write_samples(step, image)
        return finite_or_none(metrics)
