"""Config files (`configs/<method>.py:variant`), command-line overrides and validation.

A config is an `ml_collections.ConfigDict` returned by `get_config(arg)` in a Python file. Every key a
run reads must exist in that dict: overrides may only change existing keys, and values are converted to the
existing key's type, so `--config.train.num_steps=1e3` is an error rather than a silent float.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import json
import pathlib
import sys
from collections.abc import Sequence

import ml_collections
from ml_collections import config_dict

# Keys every method's config must define, with their types (None: any type, e.g. an optional path).
COMMON_KEYS: dict[str, tuple[type, ...]] = {
    "method": (str,),
    "seed": (int,),
    "batch_size": (int,),
    "image_size": (int,),
    "mixed_precision": (bool,),
    "init_from": (str, type(None)),
    "train.num_steps": (int,),
    "train.log_every": (int,),
    "train.checkpoint_every": (int,),
    "train.keep_checkpoints": (int,),
    "data.train.source": (str,),
    "data.train.path": (str, type(None)),
    "data.train.split": (str,),
    "data.eval.source": (str,),
    "data.eval.path": (str, type(None)),
    "data.eval.split": (str,),
    "data.train.on_error": (str,),
    "data.eval.on_error": (str,),
    "data.train.stream": (bool,),
    "data.eval.stream": (bool,),
    "eval.every": (int,),
    "eval.best_metric": (str,),
    "eval.best_mode": (str,),
}


# This project's config files: beside the cxr_jax package in a checkout (they are not installed).
CONFIGS_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A config file, variant, override or value is not what a run expects."""


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `path/to/file.py[:arg]`, applies `a.b=value` overrides and validates the result."""
    path, _, arg = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path!r} does not exist (expected e.g. configs/classifier.py:smoke)")
    module = _exec_config(file)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config(arg)")
    config = module.get_config(arg) if arg else module.get_config()
    config = apply_overrides(config, overrides)
    validate(config, source=spec)
    return config


def load_run(workdir: str | pathlib.Path, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The config a run was trained with (`WORKDIR/config.json`), with overrides applied and validated."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; pass --config or point --workdir at a trained run")
    saved = json.loads(path.read_text())
    config = apply_overrides(ml_collections.ConfigDict(_with_new_keys(saved)), overrides)
    validate(config, source=str(path))
    return config


def _with_new_keys(saved: dict) -> dict:
    """`saved` plus any key its method's config (`configs/<method>.py`, default variant) gained since.

    A run trained before a feature was added stays loadable: the new keys take their defaults (features
    start switched off) and every saved value wins.
    """
    try:
        defaults = method_config(saved["method"]).to_dict()
    except (KeyError, ConfigError):  # No method, or one without a config file: validate() reports it.
        return saved
    return _merge(defaults, saved)


def method_config(method: str, variant: str = "") -> ml_collections.ConfigDict:
    """`get_config(variant)` of `configs/<method>.py` (its default variant if empty), from any working directory."""
    module = configs_module(method)
    return module.get_config(variant) if variant else module.get_config()


def configs_module(name: str):
    """The module `configs.<name>`: importable from here, else run from this project's `CONFIGS_DIR`."""
    try:
        return importlib.import_module(f"configs.{name}")
    except ModuleNotFoundError as e:
        if e.name not in ("configs", f"configs.{name}"):  # A config's own import failed: not ours to hide.
            raise
    file = CONFIGS_DIR / f"{name}.py"
    if not file.is_file():
        raise ConfigError(f"no config file configs/{name}.py (looked in {CONFIGS_DIR})")
    return _exec_config(file)


def _exec_config(file: pathlib.Path):
    """Runs a config file as a fresh module.

    The `configs` package is not installed: while the file runs, the directory above its own (then this
    project's root) comes first on sys.path, so its `from configs import common` finds its siblings.
    """
    module_spec = importlib.util.spec_from_file_location(f"_cxr_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    paths = list(dict.fromkeys([str(file.resolve().parent.parent), str(CONFIGS_DIR.parent)]))
    sys.path[:0] = paths
    try:
        module_spec.loader.exec_module(module)
    finally:
        for path in paths:
            sys.path.remove(path)
    return module


def _merge(defaults: dict, saved: dict) -> dict:
    out = dict(defaults)
    for key, value in saved.items():
        both_dicts = isinstance(value, dict) and isinstance(defaults.get(key), dict)
        out[key] = _merge(defaults[key], value) if both_dicts else value
    return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Returns a copy of `config` with each `a.b=value` applied, converted to the existing key's type."""
    config = config.copy_and_resolve_references()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        parent, leaf = _parent(config, key)
        old = parent[leaf]
        new = _convert(text, old, key)
        parent[leaf] = new
    return config


def validate(config: ml_collections.ConfigDict, source: str = "config") -> None:
    """Checks that the keys every method needs exist and have the right types and values."""
    for key, types in COMMON_KEYS.items():
        try:
            value = get(config, key)
        except ConfigError as e:
            raise ConfigError(f"{source}: required key {key!r} is missing") from e
        if not isinstance(value, types) or (types == (int,) and isinstance(value, bool)):
            names = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{source}: {key} must be {names}, got {type(value).__name__} {value!r}")
    for key in ("batch_size", "image_size", "train.num_steps", "train.log_every", "train.checkpoint_every"):
        if get(config, key) <= 0:
            raise ConfigError(f"{source}: {key} must be positive, got {get(config, key)}")
    if config.eval.every < 0:
        raise ConfigError(f"{source}: eval.every must be >= 0 (0: no evaluation during training), got "
                          f"{config.eval.every}")
    if config.eval.best_mode not in ("max", "min"):
        raise ConfigError(f"{source}: eval.best_mode must be max or min, got {config.eval.best_mode!r}")


def get(config: ml_collections.ConfigDict, key: str):
    """Returns `config.a.b` for key 'a.b', with an error naming the missing part."""
    parent, leaf = _parent(config, key)
    return parent[leaf]


def to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved config as JSON (what `WORKDIR/config.json` holds)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def _parent(config, key: str):
    """Walks to the dict holding the last part of `key`; unknown keys get a did-you-mean error."""
    node = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        keys = list(node.keys())
        if part not in keys:
            prefix = ".".join(parts[:depth])
            close = difflib.get_close_matches(part, keys, n=3)
            hint = f"; did you mean {', '.join(repr('.'.join([prefix, c]).lstrip('.')) for c in close)}?" \
                if close else f"; known keys here: {sorted(keys)}"
            raise ConfigError(f"unknown config key {key!r}{hint}")
        if depth < len(parts) - 1:
            node = node[part]
            if not isinstance(node, ml_collections.ConfigDict):
                raise ConfigError(f"config key {'.'.join(parts[:depth + 1])!r} is a value, not a group")
    return node, parts[-1]


def _convert(text: str, old, key: str):
    """Parses `text` as a value of the same type as `old` (the key's current value)."""
    if isinstance(old, ml_collections.ConfigDict):
        raise ConfigError(f"config key {key!r} is a group; override one of its keys: {sorted(old.keys())}")
    if isinstance(old, config_dict.FieldReference):
        old = old.get()
    if isinstance(old, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"config key {key!r} is a bool; got {text!r} (use true or false)")
    if isinstance(old, str) or old is None:
        return None if text.lower() in ("none", "null") else text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"config key {key!r} expects {type(old).__name__}; cannot parse {text!r}") from None
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if type(value) is not type(old):
        raise ConfigError(f"config key {key!r} expects {type(old).__name__}, got {type(value).__name__} "
                          f"{text!r}")
    return value
