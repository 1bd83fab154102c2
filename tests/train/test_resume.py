"""Killed runs resume exactly: SIGKILL at an arbitrary moment, SIGTERM with a save (subprocesses); damaged
checkpoints are moved aside and failed writes stop the run, which then resumes exactly."""

import errno
import shutil
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


@pytest.mark.slow  # ~46 s; cheaper: the SIGKILL, damaged-checkpoint and failed-write resumes.
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


def _damage(step_dir, how):
    """Damages a checkpoint's array data as a preempted VM or a flaky bucket can."""
    data = max((step_dir / "state" / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size)
    if how == "truncate":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif how == "delete":
        data.unlink()
    else:  # Garble the start of the file (its compressed frames' headers); flipped bytes deep inside a frame
        # can decompress to wrong numbers without any error, which no reader can tell from real ones.
        raw = bytearray(data.read_bytes())
        raw[:64] = bytes(b ^ 0xA5 for b in raw[:64])
        data.write_bytes(bytes(raw))


def test_damaged_latest_checkpoint_is_moved_aside_and_the_run_resumes_exactly(uninterrupted, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    _damage(workdir / "checkpoints" / "120", "truncate")
    proc = run_cli("train", "--config", SMOKE, "--workdir", str(workdir), *LONG)
    assert "moved to 120.corrupt" in proc.stderr and "Traceback" not in proc.stderr
    assert (workdir / "checkpoints" / "120.corrupt").is_dir()  # Kept for inspection, never deleted.
    _assert_same_as(workdir, uninterrupted)  # Resumed from 110 and redid 111–120 exactly.


@pytest.mark.parametrize("how", ["delete", "garble"])
def test_each_damaged_checkpoint_falls_back_to_the_previous_one(uninterrupted, tmp_path, how):
    from cxr_jax import config as config_lib
    from cxr_jax.train import loop

    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    config = config_lib.load(SMOKE, [o.removeprefix("--config.") for o in LONG])
    abstract = loop.setup(config).abstract_state
    for step in (120, 110):
        _damage(workdir / "checkpoints" / str(step), how)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
    _, meta, step = ckpt.restore_newest(abstract)
    assert step == meta["step"] == 100
    assert sorted(p.name for p in (workdir / "checkpoints").glob("*.corrupt")) == ["110.corrupt", "120.corrupt"]
    for p in (workdir / "checkpoints").iterdir():
        if p.name.isdigit():
            _damage(p, how)
    with pytest.raises(FileNotFoundError, match="could be restored"):
        ckpt.restore_newest(abstract)
    ckpt.close()


def test_a_checkpoint_of_another_model_is_an_error_not_damage(uninterrupted, tmp_path):
    from cxr_jax import config as config_lib
    from cxr_jax.train import loop

    overrides = [o.removeprefix("--config.") for o in LONG] + ["model.width=16"]
    abstract = loop.setup(config_lib.load(SMOKE, overrides)).abstract_state
    ckpt = checkpoint.Checkpointer(uninterrupted / "checkpoints", read_only=True)
    with pytest.raises(ValueError, match="does not match this config's model"):
        ckpt.restore_newest(abstract)
    assert not list((uninterrupted / "checkpoints").glob("*.corrupt"))


def test_a_failed_write_stops_the_run_and_a_rerun_resumes_exactly(uninterrupted, tmp_path, monkeypatch):
    from cxr_jax import config as config_lib
    from cxr_jax.train import loop

    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    for step in (110, 120):  # As if the run had stopped after step 100.
        shutil.rmtree(workdir / "checkpoints" / str(step))
    save = checkpoint.Checkpointer.save

    def disk_full_at_110(self, step, *args, **kwargs):
        if step == 110:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.directory / "110"))
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(checkpoint.Checkpointer, "save", disk_full_at_110)
    config = config_lib.load(SMOKE, [o.removeprefix("--config.") for o in LONG])
    with pytest.raises(loop.WriteError, match="No space left on device; stopped, the checkpoint of step 100 is intact"):
        loop.train(config, workdir)
    monkeypatch.undo()
    run_cli("train", "--config", SMOKE, "--workdir", str(workdir), *LONG)
    _assert_same_as(workdir, uninterrupted)
