"""One writer per workdir (`W/train.lock`) and no silent config changes on resume (`train/workdir.py`)."""

import json
import logging
import os
import shutil
import socket
import subprocess

import pytest

from cxr_jax import checkpoint
from cxr_jax import config as config_lib
from cxr_jax.cli import main as cli_main
from cxr_jax.train import workdir as workdir_lib
from tests.conftest import ROOT, run_cli

DGM_SMOKE = f"{ROOT / 'configs' / 'dgm.py'}:smoke"


def _record(path):
    return json.loads(path.read_text())


def test_lock_records_its_holder_refuses_a_second_and_releases(tmp_path, caplog):
    lock = workdir_lib.WorkdirLock(tmp_path / "w")
    lock.acquire()  # Creates the workdir.
    record = _record(tmp_path / "w" / "train.lock")
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    # flock conflicts between two open file descriptions, even in one process.
    with pytest.raises(workdir_lib.LockedError) as raised:
        workdir_lib.WorkdirLock(tmp_path / "w").acquire()
    assert str(raised.value) == (f"{tmp_path / 'w'} is being trained by pid {os.getpid()} on "
                                 f"{socket.gethostname()} since {record['start']}")
    assert isinstance(raised.value, config_lib.ConfigError)  # The CLI's one line and exit 2.
    lock.release()
    lock.release()  # Idempotent.
    assert (tmp_path / "w" / "train.lock").read_text() == ""  # Left in place, empty: no stale record.
    with caplog.at_level(logging.WARNING):
        again = workdir_lib.WorkdirLock(tmp_path / "w")
        again.acquire()
        again.release()
    assert not caplog.records


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    gone = subprocess.Popen(["true"])
    gone.wait()  # A pid that no longer runs; its flock, had it held one, went with it.
    (tmp_path / "train.lock").write_text(json.dumps({"host": "node7", "pid": gone.pid, "start": "yesterday"}))
    lock = workdir_lib.WorkdirLock(tmp_path)
    with caplog.at_level(logging.WARNING):
        lock.acquire()
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'train.lock'}: taking over the stale lock of pid {gone.pid} on node7 (since yesterday), "
        "which is gone"]
    assert _record(tmp_path / "train.lock")["pid"] == os.getpid()
    lock.release()


def test_claim_releases_the_lock_however_the_run_ends(tmp_path):
    config = config_lib.load(DGM_SMOKE)
    with pytest.raises(RuntimeError, match="boom"), workdir_lib.claim(config, tmp_path):
        with pytest.raises(workdir_lib.LockedError):
            workdir_lib.WorkdirLock(tmp_path).acquire()
        raise RuntimeError("boom")
    lock = workdir_lib.WorkdirLock(tmp_path)  # Free again, although the traceback above is still referenced.
    lock.acquire()
    lock.release()


def test_config_changes_reports_what_changes_training_and_ignores_the_rest():
    saved = config_lib.load(DGM_SMOKE)
    new = config_lib.apply_overrides(saved, [
        "model.generator.dim=8", "optim.learning_rate=0.001", "data.normal_fraction=0.25",
        # Free: schedule, evaluation, inference-only and bookkeeping keys.
        "train.num_steps=50", "train.log_every=5", "train.checkpoint_every=25", "train.keep_checkpoints=1",
        "train.cpu_ynn_fusions=True", "eval.every=10", "eval.best_metric=ae_image_auc", "bench.num_steps=1",
        "bootstrap.num_resamples=10", "data.eval.num_examples=8", "data.prefetch=4", "saliency.threshold=percentile",
        "saliency.lung_segmenter=/runs/lungs", "init_from=/runs/other", "allow_changes=True", "data.train.stream=True"])
    changes = workdir_lib.config_changes(saved, new)
    assert changes == [("data.normal_fraction", 0.5, 0.25), ("model.generator.dim", 4, 8),
                       ("optim.learning_rate", 0.0001, 0.001)]
    assert workdir_lib.format_changes(changes) == ("data.normal_fraction 0.5 → 0.25, model.generator.dim 4 → 8, "
                                                   "optim.learning_rate 0.0001 → 0.001")
    # As config.json holds it (tuples as lists), with one key gone and one added.
    stored = json.loads(config_lib.to_json(saved))
    del stored["model"]["ae"]["latent"]
    stored["augment"]["old_key"] = "x"
    ld = config_lib.load(f"{ROOT / 'configs' / 'ld.py'}:smoke")
    assert workdir_lib.config_changes(json.loads(config_lib.to_json(ld)), ld) == []
    assert workdir_lib.format_changes(workdir_lib.config_changes(stored, saved)) == (
        "augment.old_key 'x' → (absent), model.ae.latent (absent) → 8")


def test_free_keys_of_each_method(tmp_path):
    ld = config_lib.load(f"{ROOT / 'configs' / 'ld.py'}:smoke")
    assert not workdir_lib.config_changes(ld, config_lib.apply_overrides(
        ld, ["landmarks.sigma=3.0", "data.template.split=train"]))
    convirt = config_lib.load(f"{ROOT / 'configs' / 'convirt.py'}:smoke")
    assert not workdir_lib.config_changes(convirt, config_lib.apply_overrides(
        convirt, ["probe.finetune_steps=7", "probe.train.num_examples=5", f"retrieval.candidates={tmp_path}"]))
    assert workdir_lib.config_changes(convirt, config_lib.apply_overrides(convirt, ["text.max_length=16"]))


def test_check_resume_needs_a_saved_config_and_a_checkpoint(tmp_path, caplog):
    saved = config_lib.load(DGM_SMOKE)
    changed = config_lib.apply_overrides(saved, ["model.generator.dim=8"])
    (tmp_path / "config.json").write_text(config_lib.to_json(saved))
    workdir_lib.check_resume(changed, tmp_path)  # Never trained: nothing to resume, the config is replaced.
    (tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1").mkdir(parents=True)
    workdir_lib.check_resume(changed, tmp_path)  # An unfinished save is no checkpoint.
    (tmp_path / "checkpoints" / "3").mkdir()
    with pytest.raises(workdir_lib.ConfigDriftError) as raised:
        workdir_lib.check_resume(changed, tmp_path)
    assert str(raised.value) == (f"{tmp_path} was trained with a different config: model.generator.dim 4 → 8; pass "
                                 "--config.allow_changes=True to resume anyway")
    workdir_lib.check_resume(config_lib.apply_overrides(saved, ["train.num_steps=60"]), tmp_path)
    with caplog.at_level(logging.WARNING):
        workdir_lib.check_resume(config_lib.apply_overrides(changed, ["allow_changes=True"]), tmp_path)
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path}: resuming with a different config (allow_changes=True): model.generator.dim 4 → 8"]


def test_resume_errors_are_known_by_where_they_were_raised(tmp_path):
    with pytest.raises(ValueError) as raised:
        checkpoint.Checkpointer(tmp_path, best_mode="median")
    error = workdir_lib.resume_error(raised.value)
    assert isinstance(error, workdir_lib.WorkdirError) and "best_mode must be one of" in str(error)

    def elsewhere():
        raise ValueError("a bug\nover two lines")

    with pytest.raises(ValueError) as raised:
        elsewhere()
    assert workdir_lib.resume_error(raised.value) is None  # Keeps its traceback.


def test_cli_refuses_a_workdir_another_process_trains(tmp_path):
    lock = workdir_lib.WorkdirLock(tmp_path)
    lock.acquire()
    try:
        start = _record(tmp_path / "train.lock")["start"]
        proc = run_cli("train", "--config", DGM_SMOKE, "--workdir", str(tmp_path), check=False)
    finally:
        lock.release()
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"cxr-jax train: error: {tmp_path} is being trained by pid {os.getpid()} on {socket.gethostname()} "
        f"since {start}"]
    assert not (tmp_path / "config.json").exists()  # Nothing written.


def test_cli_resume_with_a_changed_config(dgm_run, tmp_path, capsys, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(dgm_run, workdir)  # The shared run stays as it is.
    saved = (workdir / "config.json").read_text()
    proc = run_cli("train", "--config", DGM_SMOKE, "--workdir", str(workdir), "--config.model.generator.dim=8",
                   "--config.optim.learning_rate=0.001", check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"cxr-jax train: error: {workdir} was trained with a different config: model.generator.dim 4 → 8, "
        "optim.learning_rate 0.0001 → 0.001; pass --config.allow_changes=True to resume anyway"]
    assert (workdir / "config.json").read_text() == saved

    # Allowed: a warning, one more step from the saved state, and the new config recorded. The rest runs
    # `main` in this process: the same code path without a second JAX import.
    with caplog.at_level(logging.WARNING, logger="cxr_jax.train"):
        assert cli_main.main(["train", "--config", DGM_SMOKE, "--workdir", str(workdir), "--config.allow_changes=True",
                              "--config.optim.learning_rate=0.001", "--config.train.num_steps=5"]) == 0
    assert [r.getMessage() for r in caplog.records if r.name == "cxr_jax.train"] == [
        f"{workdir}: resuming with a different config (allow_changes=True): optim.learning_rate 0.0001 → 0.001"]
    assert checkpoint.Checkpointer(workdir / "checkpoints", read_only=True).latest_step() == 5
    assert json.loads((workdir / "config.json").read_text())["optim"]["learning_rate"] == 0.001

    # Allowed, but the checkpoint cannot hold the new model: one line, exit 2.
    with pytest.raises(SystemExit) as exited:
        cli_main.main(["train", "--config", DGM_SMOKE, "--workdir", str(workdir), "--config.model.generator.dim=8",
                       "--config.allow_changes=True"])
    assert exited.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"cxr-jax train: error: checkpoint {workdir / 'checkpoints' / '5'} does not match"), last
