"""`cxr-jax` talks like a tool: a first line at once, short progress, a closing summary, the files written, quiet
libraries, help for users, one-line errors, `evaluate` on the run's own config, no debris after a failed start.

In-process `main.main` calls (capsys/capfd) except the first-line timing, which needs a fresh process.
"""

import json
import logging
import shutil
import subprocess
import sys
import time

import pytest

from cxr_jax import config as config_lib
from cxr_jax import metrics
from cxr_jax.cli import console, main
from tests.conftest import ROOT, SMOKE, cli_env

BAD_DATA = ["--config.data.train.source=nih1000", "--config.data.train.path=/nonexistent/cxr"]


def _exit_code(argv) -> int:
    with pytest.raises(SystemExit) as exited:
        main.main(argv)
    return exited.value.code


def test_the_first_line_comes_within_a_second(tmp_path):
    """Printed once the config is read, before JAX, TensorFlow and the method load (~0.5 s; 2 s allowed under load)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cxr_jax", "train", "--config", SMOKE, "--workdir",
                             str(tmp_path / "w"), *BAD_DATA], cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        first = proc.stdout.readline()
        elapsed = time.perf_counter() - start
    finally:
        proc.kill()
        proc.wait()
    assert first == f"training classifier ({SMOKE}) into {tmp_path / 'w'}: 6 steps of batch 8 at 32 px\n"
    assert elapsed < 2.0, elapsed


def test_help_is_for_users_with_an_example_per_command(capsys):
    assert _exit_code(["--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: cxr-jax") and "Train, evaluate and apply chest X-ray models" in text
    assert "library functions" not in text and "COMMANDS" not in text  # Not the module's developer docstring.
    assert "examples:\n  cxr-jax train --config configs/dgm.py:demo" in text
    for name in main.COMMANDS:
        assert f"\n  {name} " in text, name
        assert _exit_code([name, "--help"]) == 0
        text_of_command = capsys.readouterr().out
        assert "--verbose" in text_of_command and "\nexample" in text_of_command, name
        assert f"\n  cxr-jax {name} " in text_of_command.split("\nexample")[1], name


def test_config_and_usage_errors_are_one_line_and_exit_2(tmp_path, capsys):
    run = tmp_path / "run"
    cases = [
        (["train", "--config", f"{ROOT / 'configs' / 'classifier.py'}:demoo", "--workdir", str(run)],
         "cxr-jax train: config error: unknown classifier variant 'demoo'; expected smoke, demo, nih1000 or paper"),
        (["evaluate", "--workdir", str(run), "--checkpoint", "foo"],
         "cxr-jax evaluate: error: argument --checkpoint: expected latest, best or a step number, got 'foo'; see "
         "`cxr-jax evaluate --help`"),
        (["train", "--config", SMOKE], "cxr-jax train: error: the following arguments are required: --workdir; see "
         "`cxr-jax train --help`"),
        (["train", "--config", SMOKE, "--workdir", str(run), "--config.train.num_step=3"],
         "cxr-jax train: config error: unknown config key 'train.num_step'; did you mean 'train.num_steps'?"),
        (["evaluate", "--workdir", str(run)],
         f"cxr-jax evaluate: config error: {run / 'config.json'} does not exist; pass --config or point --workdir at "
         "a trained run"),
        # Refused by the method (here its warm-up; a library's ValueError in a constructor reads the same way).
        (["train", "--config", SMOKE, "--workdir", str(run), "--config.train.num_steps=2"],
         "cxr-jax train: error: optim.warmup_steps=2 must be below train.num_steps=2"),
    ]
    for argv, line in cases:
        assert _exit_code(argv) == 2, argv
        assert capsys.readouterr().err.splitlines() == [line]
    assert not run.exists()  # The refused start left nothing behind.
    # --verbose (before or after the command) adds the traceback above the same last line.
    assert _exit_code(["--verbose", *cases[0][0]]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "Traceback (most recent call last):" and err[-1] == cases[0][1]


def test_a_failed_fresh_start_removes_what_it_created_and_nothing_else(tmp_path, capsys):
    fresh = tmp_path / "new" / "run"  # Neither exists: both go again.
    assert _exit_code(["train", "--config", SMOKE, "--workdir", str(fresh), *BAD_DATA]) == 2
    assert "/nonexistent/cxr: not a directory" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []

    mine = tmp_path / "mine"  # A directory of the user's: its files stay, the run's debris goes.
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert _exit_code(["train", "--config", SMOKE, "--workdir", str(mine), *BAD_DATA]) == 2
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

    previous = tmp_path / "previous"  # What an earlier run wrote is never removed.
    (previous / "checkpoints" / "3").mkdir(parents=True)
    config = config_lib.load(SMOKE, [o.removeprefix("--config.") for o in BAD_DATA])
    (previous / "config.json").write_text(config_lib.to_json(config))
    assert _exit_code(["train", "--config", SMOKE, "--workdir", str(previous), *BAD_DATA]) == 2
    assert sorted(p.name for p in previous.iterdir()) == ["checkpoints", "config.json", "train.lock"]
    assert [p.name for p in (previous / "checkpoints").iterdir()] == ["3"]


def test_progress_shows_the_key_metrics_and_every_metric_is_recorded(tmp_path, capsys, monkeypatch):
    record = {"g_loss": 1.5, "d_loss": 0.25, "recon_sum": 0.125, "tv": 0.01, "g_grad_norm": 3.0, "step_time": 0.5,
              "examples_per_sec": 16.0, "compile_time": 9.0}
    writer = metrics.MetricWriter(tmp_path, start_step=0, num_steps=8, shown=("g_loss", "d_loss", "recon_sum", "x"))
    writer.write(4, record)
    writer.close()
    assert capsys.readouterr().out == "step 4/8: g_loss=1.5 d_loss=0.25 recon_sum=0.125 (0.5 s/step)\n"
    assert metrics.read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 4, **record}]

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # A terminal: the bar's postfix.
    writer = metrics.MetricWriter(tmp_path, start_step=4, num_steps=8, shown=("loss",))
    writer.write(8, {"loss": 0.5, "accuracy": 0.75, "grad_norm": 2.0, "step_time": 0.5})
    assert writer._bar.postfix == "loss=0.5"
    writer.close()
    # A method naming none of its metrics still gets a short line: its first three, timing left out.
    assert metrics.format_metrics({"step": 1, "step_time": 1.0, "a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0},
                                  ("loss",)) == "a=1 b=2 c=3"


def test_train_announces_itself_and_closes_with_a_summary(tmp_path, capsys, monkeypatch):
    from cxr_jax.train import loop

    calls = []
    monkeypatch.setattr(loop, "train", lambda config, workdir: calls.append((config.method, workdir)))
    run = tmp_path / "run"
    assert main.main(["train", "--config", SMOKE, "--workdir", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [f"training classifier ({SMOKE}) into {run}: 6 steps of batch 8 at 32 px",
                       "loading data and compiling the classifier step on 1 CPU device…"]
    assert calls == [("classifier", str(run))]

    for step in (4, 6):  # What a run leaves: checkpoints, metrics, evaluations, TensorBoard.
        (run / "checkpoints" / str(step)).mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 6, "loss": 0.5, "accuracy": 0.75, "grad_norm": 2.0}))
    (run / "eval").mkdir()
    (run / "eval" / "history.jsonl").write_text("")
    assert main.main(["train", "--config", SMOKE, "--workdir", str(run), "--config.train.num_steps=8"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"resuming classifier ({SMOKE}) in {run} at step 6 of 8"
    assert out[2].startswith("done: classifier at step 8 (2 steps in ") and out[2].endswith(
        "s); loss=0.5 accuracy=0.75")
    assert out[3:] == [f"  checkpoints  {run / 'checkpoints'} (steps 4, 6)",
                       f"  metrics      {run / 'metrics.jsonl'}",
                       f"  evaluations  {run / 'eval' / 'history.jsonl'}",
                       f"  tensorboard  tensorboard --logdir {run / 'tensorboard'}",
                       f"  config       {run / 'config.json'}",
                       f"next: cxr-jax evaluate --workdir {run}"]


def test_libraries_are_quiet_unless_verbose(caplog):
    from absl import logging as absl_logging

    def logged():
        names = [(r.name, r.getMessage()) for r in caplog.records]
        caplog.clear()
        return names

    try:
        console.quiet_libraries(verbose=False)
        absl_logging.warning("CheckpointManagerOptions.read_only=True, setting save_interval_steps=0.")  # Orbax.
        logging.getLogger("cxr_jax.data").warning("skipping a bad image")  # Ours stay.
        assert logged() == [("cxr_jax.data", "skipping a bad image")]
        console.quiet_libraries(verbose=True)
        absl_logging.warning("Given directory is read only")
        assert logged() == [("absl", "Given directory is read only")]
    finally:
        console.quiet_libraries(verbose=False)


def test_exceptions_python_cannot_raise_print_no_traceback_unless_verbose():
    """E.g. Orbax's failed reads of a damaged checkpoint, collected after the loop moved it aside (CI saw one)."""
    code = ("import sys; from cxr_jax.cli import console; console.quiet_libraries(verbose=sys.argv[1] == 'v')\n"
            "class Reader:\n    def __del__(self): raise RuntimeError('read failed')\nReader()")
    quiet, verbose = (subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True, cwd=ROOT,
                                     env=cli_env(), check=True) for flag in ("q", "v"))
    assert "Traceback" not in quiet.stderr and "read failed" not in quiet.stderr, quiet.stderr
    assert "Traceback" in verbose.stderr and "read failed" in verbose.stderr  # The check can fail.


def test_evaluate_defaults_to_the_run_config_and_lists_its_files(dgm_run, tmp_path, capfd):
    run = tmp_path / "run"
    shutil.copytree(dgm_run, run)  # The shared run stays as it is.
    before = sorted(p.name for p in (run / "eval").iterdir())
    # No --config: the run's own config.json (4 steps, eval.every=2: not the smoke file's), with an override on top.
    assert main.main(["evaluate", "--workdir", str(run), "--config.data.eval.num_examples=16"]) == 0
    captured = capfd.readouterr()
    result = json.loads(captured.out)  # stdout is the JSON alone.
    assert result["num_images"] == 16 and result["step"] == 4
    assert result == json.loads((run / "eval" / "metrics.json").read_text())
    err = captured.err.splitlines()
    written = sorted(line.strip() for line in err[1:])
    assert err[0] == f"wrote {len(written)} files in {run / 'eval'}:"
    assert "metrics.json" in written and "cases.png" in written and "history.jsonl" not in written
    assert set(written) <= set(p.name for p in (run / "eval").iterdir()) and "history.jsonl" in before
