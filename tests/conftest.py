"""Shared test helpers: paths, CLI subprocesses, restoring a run's final state."""

from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# One XLA compilation cache for the whole session, CLI subprocesses included: many tests train the same
# smoke configs, and XLA:CPU takes tens of seconds to compile e.g. DGM's parameter initialisation. A cached
# executable is the same program, so results are unchanged; each session starts empty (no stale entries).
_CACHE = tempfile.mkdtemp(prefix="cxr_jax_test_xla_cache_")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
# JAX's default "partitionable" threefry makes XLA:CPU compile random initialisers ~4x slower (DGM's tiny
# generator: init compiles in 33 s, 7 s without). The tests' claims hold for any random bits, so they use the
# classic scheme; test_parallel's multi-device run keeps the default that users train with.
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SMOKE = f"{ROOT / 'configs' / 'classifier.py'}:smoke"


def shared_dir(name: str) -> pathlib.Path:
    """A set under ../shared/data, or skip the test with the reason."""
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (the real CXR sets live in ../shared/data beside the project)")
    return path


def cli_env(devices: int = 1) -> dict[str, str]:
    """Environment of a CLI subprocess with `devices` simulated CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "CXR_JAX_DISTRIBUTED"):
        env.pop(key, None)
    return env


def run_cli(*args: str, devices: int = 1, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs `python -m cxr_jax ARGS` in a fresh process (its own JAX device count)."""
    proc = subprocess.run([sys.executable, "-m", "cxr_jax", *args], env=cli_env(devices), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"cxr-jax {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def final_state(spec: str, workdir: pathlib.Path, overrides=()):
    """The latest checkpointed TrainState of a run, as NumPy."""
    import jax

    from cxr_jax import config as config_lib
    from cxr_jax import parallel, registry, runs

    config = config_lib.load(spec, overrides)
    mesh = parallel.make_mesh()
    method = registry.build(config, mesh)
    size = config.image_size
    batch = {"image": np.zeros((config.batch_size, size, size, 1), np.float32),
             "label": np.zeros((config.batch_size,), np.int32)}
    state, step = runs.restore_latest(workdir, method, batch, mesh)
    return jax.device_get(state), step


def event_tags(logdir) -> dict[tuple[str, str], list[int]]:
    """(kind 'scalar' | 'image', tag) → the steps it was written at, from the TensorBoard event files in `logdir`."""
    import tensorflow as tf

    tags = {}
    for path in sorted(pathlib.Path(logdir).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                kind = "image" if value.HasField("image") else "scalar"
                tags.setdefault((kind, value.tag), []).append(event.step)
    return tags


def assert_trees_equal(a, b, rtol: float = 0.0, atol: float = 0.0) -> None:
    """Leaf-wise comparison; exact unless tolerances are given."""
    import jax

    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        if rtol == atol == 0.0:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        else:
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def mann_whitney_auc(labels, scores) -> float:
    """The float64 reference AUC: the fraction of (positive, negative) pairs ranked right, ties ½."""
    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return greater / (len(pos) * len(neg))


def data_spec(source: str, path=None, split: str = "all", **options):
    """A data spec with the config defaults (configs/common.py) and these fields."""
    from configs import common

    spec = common.data_spec(source, split)
    spec.path = None if path is None else str(path)
    for key, value in options.items():
        spec[key] = value
    return spec


def image_folder(root, num: int = 6, bad=()) -> None:
    """A nih1000-layout folder of num ≤ 17 distinct flat images (value 15 i + 5; patient i // 2); `bad` rows get a
    corrupt file."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    lines = ["image,split,abnormal,patient_id"]
    for i in range(num):
        path = root / "images" / f"{i}.png"
        if i in bad:
            path.write_bytes(b"not a png")
        else:
            Image.fromarray(np.full((10, 8), 15 * i + 5, np.uint8)).save(path)
        lines.append(f"images/{i}.png,train,{i % 2},{i // 2}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def dgm_run(tmp_path_factory):
    """A 4-step smoke DGM run (trained in-process), shared by the tests of decompose and evaluate.

    It evaluates at steps 2 and 4 (`eval.every`) and keeps one latest checkpoint besides the best.
    """
    from cxr_jax import config as config_lib
    from cxr_jax.train import loop

    workdir = tmp_path_factory.mktemp("dgm_run")
    config = config_lib.load(f"{ROOT / 'configs' / 'dgm.py'}:smoke", [
        "train.num_steps=4", "train.checkpoint_every=4", "train.keep_checkpoints=1", "eval.every=2"])
    loop.train(config, workdir)
    return workdir


@pytest.fixture(scope="session")
def ld_run(tmp_path_factory):
    """A 4-step smoke LD run (both stages), shared by the tests of landmarks and segmentation transfer."""
    from cxr_jax import config as config_lib
    from cxr_jax.train import loop

    workdir = tmp_path_factory.mktemp("ld_run")
    loop.train(config_lib.load(f"{ROOT / 'configs' / 'ld.py'}:smoke", ["train.num_steps=4"]), workdir)
    return workdir
