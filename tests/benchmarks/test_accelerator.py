"""benchmarks/accelerator.py: end to end without TensorFlow on CPU, its table, peaks and failed cases."""

import json
import subprocess
import sys

import pytest

from benchmarks import accelerator
from tests.conftest import ROOT, cli_env

TINY = ["--variant", "smoke", "--image-size", "32", "--batch-size", "2", "--steps", "1", "--warmup", "1"]


def _run_without_tf(tmp_path, *args: str) -> tuple[list[dict], str]:
    out, jsonl = tmp_path / "accelerator.md", tmp_path / "accelerator.jsonl"
    proc = subprocess.run([sys.executable, "-m", "tests.no_tensorflow", "benchmarks.accelerator", *args,
                           "--out", str(out), "--jsonl", str(jsonl)],
                          cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert printed == records
    return records, out.read_text()


def test_one_case_runs_end_to_end_without_tensorflow(tmp_path):  # ~30 s pinned to one core: one LD smoke compile.
    records, table = _run_without_tf(tmp_path, *TINY, "--methods", "ld", "--precision", "fp32",
                                     "--peak-tflops", "0.5")
    (r,) = records
    assert (r["method"], r["precision"], r["batch_size"], r["image_size"], r["timed_steps"]) == ("ld", "fp32", 2, 32, 1)
    assert r["flops_per_step"] > 0 and r["step_time_median_s"] > 0 and r["compile_time_s"] > 0
    assert r["peak_flops_per_sec"] == 0.5e12 and r["mfu"] == pytest.approx(r["achieved_flops_per_sec"] / 0.5e12)
    assert "| ld | fp32 | 2 | 32 |" in table and "1 × cpu" in table


@pytest.mark.slow  # ~6 min pinned to one core: six compiles.
def test_every_method_and_precision_runs_without_tensorflow(tmp_path):
    records, table = _run_without_tf(tmp_path, *TINY)
    assert [(r["method"], r["precision"]) for r in records] == [
        (m, p) for m in accelerator.METHODS for p in accelerator.PRECISIONS]
    assert all(r["flops_per_step"] > 0 for r in records) and table.count("\n| ") == 6


def test_table_and_exit_status_report_a_failed_case(tmp_path, monkeypatch, capsys):
    def fake(config, mesh, *, steps, warmup):
        if config.mixed_precision:
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory\nmore detail")
        assert config.model.generator.remat  # The override reached every case.
        return {"compile_time_s": 2.0, "flops_per_step": 4e12, "timed_steps": steps, "step_time_median_s": 0.5,
                "examples_per_sec": config.batch_size / 0.5, "achieved_flops_per_sec": 8e12}

    monkeypatch.setattr(accelerator, "run_case", fake)
    out = tmp_path / "t.md"
    status = accelerator.main(["--methods", "dgm", "--batch-size", "4", "--steps", "3", "--peak-tflops",
                               "bf16=100,fp32=16", "--config-override", "model.generator.remat=True",
                               "--out", str(out)])
    assert status == 1
    ok, failed = (json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{"))
    assert ok["mfu"] == 0.5 and ok["batch_size"] == 4 and ok["image_size"] == 256 and ok["timed_steps"] == 3
    assert failed["error"] == "RuntimeError: RESOURCE_EXHAUSTED: out of memory" and "mfu" not in failed
    text = out.read_text()
    assert "| dgm | fp32 | 4 | 256 | 0.5 | 8 | 4000.0 | 8 | 50.0 % | 16.0 |" in text
    assert "| dgm | bf16 | 4 | 256 | failed: RuntimeError: RESOURCE_EXHAUSTED: out of memory |" in text


def test_peaks_by_device_kind_and_precision():
    assert accelerator.peak_flops("bf16", "NVIDIA H200", {}) == (989.4e12, "H200 bf16 datasheet")
    assert accelerator.peak_flops("fp32", "NVIDIA H100 80GB HBM3", {}) == (494.7e12, "H100 tf32 datasheet")
    assert accelerator.peak_flops("bf16", "NVIDIA H200 NVL", {})[1] == "H200 NVL bf16 datasheet"
    assert accelerator.peak_flops("bf16", "cpu", {}) == (None, "")
    assert accelerator.peak_flops("fp32", "cpu", accelerator.parse_peaks("67")) == (67e12, "--peak-tflops")
    assert accelerator.parse_peaks("bf16=900") == {"bf16": 900.0}


def test_convirt_paper_gets_a_vocabulary_of_its_size(tmp_path):
    args = accelerator.parse_args(["--methods", "convirt"])
    config = accelerator.case_config("convirt", "bf16", args, tmp_path)
    lines = open(config.text.vocab_file, encoding="utf-8").read().splitlines()
    assert config.mixed_precision and len(lines) == config.text.vocab_size == 30522 and lines[0] == "[PAD]"
    assert not config.model.image_weights and not config.model.text_weights  # No weight files to build the towers.
