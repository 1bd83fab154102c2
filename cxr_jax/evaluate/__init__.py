"""Evaluation: restore a run's latest checkpoint, run its method's evaluator, write `W/eval/`."""

from __future__ import annotations

import json
import math
import pathlib

import jax
import ml_collections

from cxr_jax import parallel
from cxr_jax.evaluate import common


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, float]:
    """Evaluates the latest checkpoint; writes `W/eval/metrics.json` (flat, named numbers) and figures."""
    from cxr_jax.methods import EVALUATORS

    mesh = parallel.make_mesh()
    method, state, step = common.restore_method(config, workdir, mesh)
    outdir = pathlib.Path(workdir) / "eval"
    outdir.mkdir(parents=True, exist_ok=True)
    result = {"step": float(step), **EVALUATORS[config.method](method, state, mesh, outdir)}
    if jax.process_index() == 0:
        clean = {k: (v if math.isfinite(v) else None) for k, v in result.items()}
        (outdir / "metrics.json").write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
    return result
