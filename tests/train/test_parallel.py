"""Same run on 1 device, 8 simulated devices and 2 jax.distributed processes (subprocesses)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cxr_jax import metrics
from launch import multiprocess
from tests.conftest import ROOT, SMOKE, assert_trees_equal, cli_env, final_state, run_cli

# Relative to each leaf's largest magnitude. An 8-way split reassociates float sums (BatchNorm statistics,
# gradient means): measured 3e-5 on gradients, 2e-5 on params after 3 SGD steps; it grows with more steps.
TOL = 1e-4


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one_device")
    run_cli("train", "--config", SMOKE, "--workdir", str(workdir))
    return workdir


def _losses(workdir):
    return np.array([r["loss"] for r in metrics.read_jsonl(workdir / "metrics.jsonl")])


def test_eight_devices_match_one_device_step_by_step():
    env = {**cli_env(devices=8), "JAX_THREEFRY_PARTITIONABLE": "true"}  # JAX's default, as users run it.
    proc = subprocess.run([sys.executable, "-m", "tests.train.dp_equivalence", SMOKE, "3"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    diffs = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("grads", "losses", "params", "batch_stats"):
        assert diffs[key] < TOL, (key, diffs)


@pytest.mark.slow  # ~60 s with its fixture; cheaper: test_eight_devices_match_one_device_step_by_step.
def test_eight_device_cli_run_logs_the_same_losses(reference, tmp_path):
    run_cli("train", "--config", SMOKE, "--workdir", str(tmp_path), devices=8)
    np.testing.assert_allclose(_losses(tmp_path), _losses(reference), rtol=TOL)


@pytest.mark.slow  # ~110 s with its fixture; cheaper: the 8-device step-by-step test and the launcher test.
def test_two_processes_match_one_process_with_two_devices(reference, tmp_path):
    two_devices = tmp_path / "two_devices"
    run_cli("train", "--config", SMOKE, "--workdir", str(two_devices), devices=2)
    command = [sys.executable, "-m", "cxr_jax", "train", "--config", SMOKE, "--workdir", str(tmp_path / "mp")]
    assert _launch(command, cli_env()) == [0, 0]
    np.testing.assert_allclose(_losses(tmp_path / "mp"), _losses(reference), rtol=TOL)
    got, _ = final_state(SMOKE, tmp_path / "mp")
    want, _ = final_state(SMOKE, two_devices)
    # gloo's all-reduce and the in-process one agree, but not always to the bit: XLA:CPU splits reductions
    # over its intra-op thread pool, sized by the cores each process may use, so two processes and one
    # two-device process can sum in different orders (bit-identical on two cores). Adam then divides by √v:
    # a parameter whose gradient is ~0, at that rounding noise, steps by up to a learning rate (1e-3 here)
    # with either sign, so pinned to one core two of a bias's 32 elements ended 2.6e-6 apart. What holds on
    # any core count: float32 rounding (rtol) plus 5 % of the learning rate (atol); a wrong all-reduce moves
    # every parameter by the order of the learning rate and the losses above by more than TOL.
    assert_trees_equal(got, want, rtol=1e-5, atol=5e-5)


def _launch(command, env):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        return multiprocess.launch(command, num_processes=2, timeout=300)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_batch_that_does_not_divide_the_devices_is_a_clear_error(tmp_path):
    proc = run_cli("train", "--config", SMOKE, "--workdir", str(tmp_path), "--config.batch_size=12",
                   devices=8, check=False)
    assert proc.returncode == 2
    assert "batch_size=12 does not divide evenly over 8 devices" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_launcher_cli_reports_failure():
    proc = subprocess.run([sys.executable, "-m", "launch.multiprocess", "--num-processes", "2", "--",
                           sys.executable, "-c", "import os, sys; sys.exit(int(os.environ['JAX_PROCESS_ID']) * 3)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "exit codes: [0, 3]" in proc.stderr


def test_cpu_train_steps_leave_convolutions_to_xla_not_ynnpack():
    import jax
    import jax.numpy as jnp

    from cxr_jax import parallel

    def conv(x, w):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jax.nn.relu(y))

    def fused(options=None):
        text = jax.jit(jax.grad(conv), compiler_options=options).lower(*args).compile().as_text()
        return "%ynn_fusion" in text

    args = (jnp.ones((4, 32, 32, 16)), jnp.ones((3, 3, 16, 32)))
    assert not parallel._cpu_accepts("xla_cpu_no_such_option", "")
    if not parallel._cpu_accepts(parallel._NO_YNN, ""):
        pytest.skip("this jaxlib has no YNN fusion option")
    mesh = parallel.make_mesh(jax.devices()[:1])
    assert fused(parallel.compiler_options(mesh))
    assert not fused(parallel.compiler_options(mesh, ynn_fusions=False))
