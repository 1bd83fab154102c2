"""The Method contract: synthetic batches like the real ones, and steps built and run without TensorFlow."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from cxr_jax import config as config_lib
from cxr_jax import parallel
from cxr_jax.train import loop
from tests.conftest import ROOT, cli_env

METHODS = ("dgm", "convirt", "ld")


def _without_tf(module: str, *args: str, timeout: float = 600) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tests.no_tensorflow", module, *args], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", METHODS)
def test_synthetic_batch_is_shaped_like_the_pipelines(name):
    config = config_lib.load(f"{ROOT / 'configs' / name}.py:smoke")
    s = loop.setup(config, mesh=parallel.make_mesh(jax.devices()[:1]))
    real = jax.device_get(s.first_batch)
    fake = s.method.synthetic_batch(config.batch_size, seed=1)
    assert sorted(fake) == sorted(real)
    for key, value in real.items():
        assert (fake[key].shape, fake[key].dtype) == (value.shape, value.dtype), key
    images = fake.get("image", fake.get("view1"))
    assert -1 <= images.min() and images.max() <= 1
    if name == "dgm":  # The discriminator's reals: the composition's normals.
        assert (fake["label"] == 0).sum() == s.method.batch_composition[0]
    if name == "convirt":
        np.testing.assert_array_equal(fake["attention_mask"], fake["input_ids"] != s.method.tokenizer.pad_id)
        assert fake["input_ids"].max() < len(s.method.tokenizer.vocab)


def test_methods_build_and_trace_their_step_without_tensorflow():
    """What benchmarks/accelerator.py does on a machine without TensorFlow, up to compiling (fast)."""
    out = _without_tf("tests.train.steps_without_tf", *METHODS, "--trace")
    assert out == {"results": dict.fromkeys(METHODS), "tf_modules": []}


@pytest.mark.slow  # ~2.5–4 min pinned to one core: three compiles. Cheaper: the trace above, test_accelerator.
def test_methods_run_a_step_without_tensorflow():
    out = _without_tf("tests.train.steps_without_tf", *METHODS)
    assert sorted(out["results"]) == sorted(METHODS) and not out["tf_modules"]
    assert all(np.isfinite(loss) for loss in out["results"].values()), out
