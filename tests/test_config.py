import json
import subprocess
import sys

import pytest

from cxr_jax import config as config_lib
from tests.conftest import ROOT

VARIANTS = {"classifier": ["smoke", "demo", "nih1000", "paper"],
            "convirt": ["smoke", "demo", "covid", "paper", "large"],
            "dgm": ["smoke", "demo", "nih1000", "jsrt", "paper"],
            "ld": ["smoke", "demo", "cxr", "shape", "paper"],
            "segment": ["smoke", "lungs", "jsrt", "ld_transfer"]}


@pytest.mark.parametrize("method,variant", [(m, v) for m, vs in VARIANTS.items() for v in vs])
def test_every_variant_loads_and_validates(method, variant):
    config = config_lib.load(f"{ROOT / 'configs' / method}.py:{variant}")
    assert config.method == method
    for key in config_lib.COMMON_KEYS:
        config_lib.get(config, key)


def test_every_config_file_is_listed():
    files = {p.stem for p in (ROOT / "configs").glob("*.py")} - {"__init__", "common"}
    assert files == set(VARIANTS)


def test_overrides_convert_to_the_key_type():
    config = config_lib.load(f"{ROOT}/configs/classifier.py:smoke",
                             ["train.num_steps=7", "optim.learning_rate=1", "mixed_precision=true",
                              "data.train.path=/x", "model.stage_sizes=(2, 2)", "init_from=/runs/a"])
    assert config.train.num_steps == 7
    assert config.optim.learning_rate == 1.0 and isinstance(config.optim.learning_rate, float)
    assert config.mixed_precision is True
    assert config.data.train.path == "/x"
    assert config.model.stage_sizes == (2, 2)
    assert config.init_from == "/runs/a"


@pytest.mark.parametrize("override,message", [
    ("train.num_step=3", "did you mean 'train.num_steps'"),
    ("nonsense=3", "unknown config key 'nonsense'"),
    ("train.num_steps=1e3", "expects int"),
    ("train.num_steps=abc", "expects int"),
    ("mixed_precision=maybe", "is a bool"),
    ("train=3", "is a group"),
    ("batch_size", "not of the form key=value"),
    ("batch_size=0", "must be positive"),
    ("eval.every=-1", "eval.every must be >= 0"),
    ("eval.best_mode=largest", "eval.best_mode must be max or min"),
])
def test_bad_overrides_fail_clearly(override, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load(f"{ROOT}/configs/classifier.py:smoke", [override])


def test_missing_file_and_unknown_variant():
    with pytest.raises(config_lib.ConfigError, match="does not exist"):
        config_lib.load("configs/nope.py:smoke")
    with pytest.raises(config_lib.ConfigError,
                       match=r"unknown classifier variant 'large'; expected smoke, demo, nih1000 or paper$"):
        config_lib.load(f"{ROOT}/configs/classifier.py:large")
    with pytest.raises(config_lib.ConfigError, match="unknown ld variant 'nope'; expected smoke, demo, cxr, shape"):
        config_lib.load(f"{ROOT}/configs/ld.py:nope")


def test_config_files_import_no_tensorflow():
    code = ("import sys; from cxr_jax import config; "
            f"[config.load(f'configs/{{m}}.py:smoke') for m in {tuple(VARIANTS)}]; "
            "assert 'tensorflow' not in sys.modules, 'a config imported tensorflow'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_config_files_load_from_another_directory(tmp_path):
    # `configs` is not installed: a file loads by path, and a method's defaults come from the project's configs/.
    code = ("import sys; from cxr_jax import config; path = list(sys.path); "
            "print(config.method_config('ld', 'paper').image_size, "
            f"config.load({str(ROOT / 'configs' / 'dgm.py')!r} + ':smoke').method); "
            "assert sys.path == path, 'sys.path changed'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["448", "dgm"]


def test_json_round_trip():
    config = config_lib.load(f"{ROOT}/configs/classifier.py:smoke")
    data = json.loads(config_lib.to_json(config))
    assert data["train"]["num_steps"] == config.train.num_steps
    assert data["data"]["train"]["path"] is None


def test_a_run_saved_before_a_key_existed_loads_with_its_default(tmp_path):
    saved = json.loads(config_lib.to_json(config_lib.load(f"{ROOT / 'configs' / 'ld.py'}:smoke", ["batch_size=6"])))
    del saved["shape"], saved["data"]["shape_masks"]  # As written by a run trained before the shape prior,
    del saved["eval"]  # and before evaluation during training.
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = config_lib.load_run(tmp_path)
    assert config.shape.weight == 0.0 and config.data.shape_masks.num_examples == 5  # configs/ld.py defaults.
    assert (config.eval.best_metric, config.eval.best_mode) == ("landmark_mre_px", "min")
    assert config.batch_size == 6 and config.model.layers == saved["model"]["layers"]  # Saved values win.
