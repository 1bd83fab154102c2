"""Killed runs resume exactly: SIGKILL at an arbitrary moment, SIGTERM with a save (subprocesses)."""

import signal
import subprocess
import sys
import time

import pytest

from cxr_jax import checkpoint, metrics
from tests.conftest import ROOT, SMOKE, assert_trees_equal, cli_env, final_state, run_cli

# Long enough that a kill after the first checkpoints lands mid-run. Evaluated every 20 steps, the best step
# by the *lowest* AUC: an early step, so the best checkpoint must outlive the latest 3 across the kill.
LONG = ["--config.train.num_steps=120", "--config.train.checkpoint_every=10", "--config.train.log_every=5",
        "--config.eval.every=20", "--config.eval.best_mode=min"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    run_cli("train", "--config", SMOKE, "--workdir", str(workdir), *LONG)
    return workdir


def _start(workdir):
    return subprocess.Popen([sys.executable, "-m", "cxr_jax", "train", "--config", SMOKE, "--workdir",
                             str(workdir), *LONG], env=cli_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(workdir, proc, at_least=20, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (workdir / "checkpoints").is_dir():
            step = checkpoint.Checkpointer(workdir / "checkpoints", read_only=True).latest_step()
            if step is not None and step >= at_least:
                return step
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise TimeoutError("no checkpoint appeared")


def _assert_same_as(workdir, reference):
    log = metrics.read_jsonl(workdir / "metrics.jsonl")
    ref_log = metrics.read_jsonl(reference / "metrics.jsonl")
    assert [r["step"] for r in log] == [r["step"] for r in ref_log]
    for key in ("loss", "accuracy", "grad_norm", "param_norm", "learning_rate"):
        assert [r[key] for r in log] == [r[key] for r in ref_log], key
    # Evaluation: the same history (the killed run's records after its checkpoint cut away and redone), and
    # the same best checkpoint kept beside the latest.
    history = (workdir / "eval" / "history.jsonl").read_text()
    assert history == (reference / "eval" / "history.jsonl").read_text()
    assert [r["step"] for r in metrics.read_jsonl(workdir / "eval" / "history.jsonl")] == [20, 40, 60, 80, 100, 120]
    best = checkpoint.Checkpointer(workdir / "checkpoints", read_only=True, best_metric="auc", best_mode="min")
    ref_best = checkpoint.Checkpointer(reference / "checkpoints", read_only=True, best_metric="auc", best_mode="min")
    assert best.resolve("best") == ref_best.resolve("best")
    assert _steps(workdir) == _steps(reference) == sorted({best.resolve("best"), 100, 110, 120})
    state, step = final_state(SMOKE, workdir, [o.removeprefix("--config.") for o in LONG])
    ref_state, ref_step = final_state(SMOKE, reference, [o.removeprefix("--config.") for o in LONG])
    assert step == ref_step == 120
    assert_trees_equal(state, ref_state)  # Bit-identical: params, optimizer state, BatchNorm statistics.


def _steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_sigkill_then_resume_is_bit_exact(uninterrupted, tmp_path):
    proc = _start(tmp_path)
    _wait_for_checkpoint(tmp_path, proc)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # Killed mid-run, not finished.
    killed_at = checkpoint.Checkpointer(tmp_path / "checkpoints", read_only=True).latest_step()
    assert killed_at < 120
    run_cli("train", "--config", SMOKE, "--workdir", str(tmp_path), *LONG)
    _assert_same_as(tmp_path, uninterrupted)


def test_sigterm_saves_before_exit_and_resumes(uninterrupted, tmp_path):
    proc = _start(tmp_path)
    _wait_for_checkpoint(tmp_path, proc, at_least=10)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "stopped by SIGTERM after step" in stderr
    stopped = int(stderr.split("stopped by SIGTERM after step ")[1].split(";")[0])
    assert checkpoint.Checkpointer(tmp_path / "checkpoints", read_only=True).latest_step() == stopped
    run_cli("train", "--config", SMOKE, "--workdir", str(tmp_path), *LONG)
    _assert_same_as(tmp_path, uninterrupted)
