"""experiments/ld_transfer.py: each cell's overrides, the resume from finished runs and the seed summary."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

PATH = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "ld_transfer.py"
_spec = importlib.util.spec_from_file_location("ld_transfer", PATH)
ld_transfer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ld_transfer)


def _metrics(value: float) -> dict:
    return {f"dice_{s}": value for s in (*ld_transfer.STRUCTURES, "mean")}


def test_cells_differ_only_in_initialisation():
    ld = ld_transfer.cell_args(ld_run="R", labels=5, seed=2, steps=200, freeze=50)
    rand = ld_transfer.cell_args(ld_run=None, labels=5, seed=2, steps=200, freeze=50)
    assert "--config.model.encoder_from=R" in ld and "--config.optim.freeze_encoder_steps=50" in ld
    assert "--config.optim.freeze_encoder_steps=0" in rand and not any("encoder_from" in a for a in rand)
    for args in (ld, rand):  # The same labelled images and evaluation for both.
        assert {"--config.data.train.num_examples=5", "--config.data.train.sample_seed=2", "--config.seed=2",
                "--config.eval.every=200"} <= set(args)


def test_a_finished_cell_is_read_back_not_trained(tmp_path):
    history = tmp_path / "cell" / "eval" / "history.jsonl"
    history.parent.mkdir(parents=True)
    history.write_text(json.dumps({"step": 100, **_metrics(0.1)}) + "\n" + json.dumps({"step": 200, **_metrics(0.7)}))
    assert ld_transfer.run_cell(tmp_path / "cell", ["--no-such-flag"], 200)["dice_mean"] == 0.7


def test_summary_and_table(tmp_path):
    cells = {"1": {"ld": [_metrics(0.8), _metrics(0.6)], "random": [_metrics(0.7), _metrics(0.65)]}}
    row = ld_transfer.summarise(cells)["1"]["heart"]
    assert row["ld_mean"] == pytest.approx(0.7) and row["random_mean"] == pytest.approx(0.675)
    assert row["ld_sd"] == pytest.approx(np.std([0.8, 0.6], ddof=1)) and (row["ld_wins"], row["seeds"]) == (1, 2)
    out = tmp_path / "t.json"
    out.write_text(json.dumps({"summary": ld_transfer.summarise(cells)}))
    table = ld_transfer.markdown(json.loads(out.read_text())["summary"])
    assert "| 1 | 0.700 ± 0.141 vs 0.675 ± 0.035 (1/2) |" in table
