"""The methods a config's `method` key selects: name → `module:Class`, imported on first use.

Nothing is imported until a method is asked for, so `cxr-jax train --config configs/ld.py:…` loads LD's code
only, not DGM's, ConVIRT's or the evaluators' plotting libraries.
"""

from __future__ import annotations

import importlib
import pathlib

import jax
import ml_collections

from cxr_jax.config import ConfigError
from cxr_jax.train.method import Method

METHODS = {
    "classifier": "cxr_jax.methods.classifier.trainer:Classifier",
    "convirt": "cxr_jax.methods.convirt.trainer:ConVIRT",
    "dgm": "cxr_jax.methods.dgm.trainer:DGM",
    "ld": "cxr_jax.methods.ld.trainer:LD",
    "segment": "cxr_jax.methods.segment.trainer:Segment",
}


def get(name: str) -> type[Method]:
    """The class of method `name`."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; expected one of {', '.join(sorted(METHODS))}")
    module, _, cls = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None, *,
          run: str | pathlib.Path | None = None) -> Method:
    """The method object of `config.method` for `config` on `mesh`.

    `run`: the run directory whose checkpoints the object will restore; it reads what the run wrote besides
    them (`Method.read_run`) before anything else is asked of it. A ValueError of the constructor (where methods
    check their config, and libraries check the values handed on) is a ConfigError.
    """
    cls = get(config.method)
    try:
        method = cls(config, mesh)
    except ConfigError:
        raise
    except ValueError as e:  # A library refusing a config value (an optax schedule, a module's shape): one line.
        raise ConfigError(f"{config.method} config: {' '.join(str(e).split())}") from e
    if run is not None:
        method.read_run(pathlib.Path(run))
    return method
