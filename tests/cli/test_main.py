"""The `cxr-jax` command end to end (subprocesses, as a user runs it)."""

import json

import pytest

from tests.conftest import SMOKE, image_folder, run_cli


@pytest.mark.slow
def test_train_evaluate_bench(tmp_path):
    run_cli("train", "--config", SMOKE, "--workdir", str(tmp_path), "--config.train.num_steps=4")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["num_steps"] == 4 and config["method"] == "classifier"

    proc = run_cli("evaluate", "--config", SMOKE, "--workdir", str(tmp_path))
    result = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert json.loads(proc.stdout) == result
    assert result["step"] == 4 and result["num_examples"] == 32
    assert all(isinstance(v, (int, float)) for v in result.values())  # Flat, named numbers.
    assert 0.0 <= result["auc"] <= 1.0
    assert (tmp_path / "eval/roc.png").stat().st_size > 1000
    assert result["auc_ci_low"] <= result["auc"] <= result["auc_ci_high"]
    proc = run_cli("compare", "--baseline", str(tmp_path), "--candidate", str(tmp_path), "--resamples", "50")
    same = json.loads(proc.stdout)  # A run against itself: no difference, on every resample.
    assert same["delta_auc"] == same["delta_ci_low"] == same["delta_ci_high"] == 0.0
    assert same["num_images"] == 32 and same["p_not_better"] == 1.0

    out = tmp_path / "bench.json"
    proc = run_cli("bench", "--config", SMOKE, "--out", str(out), "--matmul-size", "256", "--steps", "2",
                   "--warmup", "0", "--profile")
    bench = json.loads(out.read_text())
    assert bench["timed_steps"] == 2
    summary = next(line for line in proc.stdout.splitlines() if line.startswith("classifier batch 8 at 32 px, "))
    assert "s/step (median)" in summary  # The one-line summary, then the profile's table.
    assert bench["ops"]["conv forward"] > 0 and bench["ops"]["conv kernel gradient"] > 0
    assert sum(bench["ops"].values()) <= 1.5 * bench["profiled_step_s"]
    assert "| conv forward |" in proc.stdout and "| **all ops** |" in proc.stdout
    for key in ("step_time_median_s", "examples_per_sec", "compile_time_s", "flops_per_step",
                "achieved_flops_per_sec", "fraction_of_peak", "peak_host_memory_mb"):
        assert bench[key] > 0, key
    assert bench["examples_per_sec"] == bench["batch_size"] / bench["step_time_median_s"]


def test_config_errors_are_clear(tmp_path):
    proc = run_cli("train", "--config", SMOKE, "--workdir", str(tmp_path), "--config.train.num_step=3", check=False)
    assert proc.returncode == 2 and "did you mean 'train.num_steps'" in proc.stderr
    proc = run_cli("train", "--config", SMOKE, "--workdir", str(tmp_path), "--steps=3", check=False)
    assert proc.returncode == 2 and "unrecognized argument '--steps=3'" in proc.stderr


def test_data_errors_are_clear(tmp_path):
    proc = run_cli("train", "--config", SMOKE, "--workdir", str(tmp_path), "--config.data.train.source=nih1000",
                   f"--config.data.train.path={tmp_path / 'nowhere'}", check=False)
    assert proc.returncode == 2 and "nowhere: not a directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_evaluate_without_checkpoint_is_clear(tmp_path):
    proc = run_cli("evaluate", "--config", SMOKE, "--workdir", str(tmp_path), check=False)
    assert proc.returncode != 0 and "no checkpoint under" in proc.stderr


@pytest.mark.slow  # ~77 s; cheaper: test_loop's streaming test and test_pipeline's bad-file tests.
def test_streamed_training_skips_a_bad_file_and_bench_data(tmp_path):
    image_folder(tmp_path / "data", num=12, bad=(5,))
    data = [f"--config.data.{s}.{k}={v}" for s in ("train", "eval")
            for k, v in (("source", "nih1000"), ("path", tmp_path / "data"), ("split", "train"), ("stream", True))]
    proc = run_cli("train", "--config", SMOKE, "--workdir", str(tmp_path / "w"), *data, check=False)
    assert proc.returncode == 2 and "5.png: cannot decode image" in proc.stderr and "Traceback" not in proc.stderr
    skip = [f"--config.data.{s}.on_error=skip" for s in ("train", "eval")]
    proc = run_cli("train", "--config", SMOKE, "--workdir", str(tmp_path / "w"), *data, *skip)
    assert "skipping a bad image (1 so far)" in proc.stderr
    run_cli("evaluate", "--config", SMOKE, "--workdir", str(tmp_path / "w"), *data, *skip)
    result = json.loads((tmp_path / "w/eval/metrics.json").read_text())
    assert result["num_examples"] == 11  # The bad image is dropped from evaluation, not replaced.
    predictions = (tmp_path / "w/eval/predictions.csv").read_text().splitlines()
    assert predictions[0] == "name,patient,label,logit" and len(predictions) == 12
    assert not any(row.startswith("images/5.png") for row in predictions)
    assert predictions[6].startswith("images/6.png,3,0,")  # Rows after the bad file keep their own ids.

    out = tmp_path / "data.json"
    run_cli("bench", "--config", SMOKE, "--data", "--num-batches", "2", "--out", str(out), *data[:4], skip[0])
    bench = json.loads(out.read_text())
    for name in ("load", "decode", "classifier", "convirt", "ld", "stream_decode", "stream_convirt"):
        assert bench[f"{name}_images_per_sec"] > 0, name
