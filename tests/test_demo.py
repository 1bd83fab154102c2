"""`cxr-jax demo`: its configs, a whole (smoke-sized) demo, the page it writes and a rerun that continues."""

import html.parser
import json

import pytest

from cxr_jax import config as config_lib
from cxr_jax import demo
from tests.conftest import run_cli


def test_demo_configs_are_each_methods_demo_variant_shortened():
    chosen = demo.configs(list(demo.DEMOS))
    for name, config in chosen.items():
        assert config.method == name
        full = config_lib.method_config(name, "demo")
        assert config.image_size == full.image_size and config.model.to_dict() == full.model.to_dict()
        assert config.train.num_steps < full.train.num_steps
    with pytest.raises(config_lib.ConfigError, match="subset of dgm,convirt,ld"):
        demo.configs(["dgm", "segment"])


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.images, self.cells = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs["src"])

    def handle_data(self, data):
        self.cells.append(data)


def _read_page(workdir):
    page = _Page()
    page.feed((workdir / "index.html").read_text())
    return page


def test_the_page_shows_each_metric_beside_its_baseline_and_chance(tmp_path):
    results = {}
    for i, (name, entry) in enumerate(demo.DEMOS.items()):
        keys = [k for row in entry.rows for k in (row.metric, row.baseline, row.chance) if k]
        results[name] = {"step": 7.0, **{k: 0.1 * i + 0.01 * j for j, k in enumerate(keys)}}
        (tmp_path / name / entry.figures[0][0]).parent.mkdir(parents=True)
        (tmp_path / name / entry.figures[0][0]).write_bytes(b"png")  # Only the first figure exists.
    demo.write_index(tmp_path, results)
    page = _read_page(tmp_path)
    assert page.sections == list(demo.DEMOS)
    assert page.images == [f"{name}/{entry.figures[0][0]}" for name, entry in demo.DEMOS.items()]
    for result in results.values():
        for key, value in result.items():
            assert (f"{value:.3f}" if key != "step" else "Step 7.") in " ".join(page.cells)
    text = (tmp_path / "index.html").read_text()
    assert text.count("<th>chance</th>") == 2  # DGM's pointing and ConVIRT's recall rows have chance levels.
    assert text.count("class='win'") == sum(  # Bold where the method beats its baseline (else chance).
        (r[row.metric] > r[row.baseline or row.chance]) == row.higher_is_better
        for name, r in results.items() for row in demo.DEMOS[name].rows)
    assert [line.split()[0] for line in demo.summary(results)] == list(demo.DEMOS)


def _run_demo(workdir, methods, **kwargs):
    lines = []
    tiny = ["train.num_steps=3", "train.checkpoint_every=3", "data.eval.num_examples=32"]  # Warm-up: 2.
    results = demo.run(workdir, methods, status=lines.append, variant="smoke", overrides=tiny, **kwargs)
    for name in methods:
        written = json.loads((workdir / name / "eval" / "metrics.json").read_text())
        assert written["step"] == 3
        for row in demo.DEMOS[name].rows:  # The page's keys are the evaluation's.
            assert {row.metric, row.baseline or row.metric, row.chance or row.metric} <= set(written)
            assert results[name][row.metric] == pytest.approx(written[row.metric])
    page = _read_page(workdir)
    assert page.sections == methods
    for src in page.images:  # Relative to the page, and written by the runs' evaluations.
        assert (workdir / src).stat().st_size > 1000
    return lines, tiny


def test_demo_reruns_skip_what_is_done_and_longer_demos_continue(tmp_path):
    lines, tiny = _run_demo(tmp_path, ["ld"])  # One method: one lane, in this process.
    assert lines[0] == f"ld: training 3 steps into {tmp_path / 'ld'} (compiling first)"
    assert lines[-1].startswith("ld: done; mean radial error (px):")
    stamp = (tmp_path / "ld" / "eval" / "metrics.json").stat().st_mtime_ns
    again = []
    demo.run(tmp_path, ["ld"], status=again.append, variant="smoke", overrides=tiny)
    assert "already" in again[0] and (tmp_path / "ld" / "eval" / "metrics.json").stat().st_mtime_ns == stamp
    more = []  # A longer demo continues the same run from its checkpoint.
    demo.run(tmp_path, ["ld"], status=more.append, variant="smoke", overrides=[*tiny[1:], "train.num_steps=4"])
    assert more[0] == f"ld: training 4 steps into {tmp_path / 'ld'} (compiling first)"
    assert json.loads((tmp_path / "ld" / "eval" / "metrics.json").read_text())["step"] == 4
    assert json.loads((tmp_path / "ld" / "config.json").read_text())["train"]["num_steps"] == 4


def test_side_by_side_lanes_report_a_failing_method_and_keep_its_log(tmp_path):
    lines = []
    broken = ["data.train.source=jsrt", f"data.train.path={tmp_path / 'missing'}"]  # Fails in the lane's process.
    with pytest.raises(demo.DemoError, match=f"failed; see {tmp_path / 'logs'}"):
        demo.run(tmp_path, ["convirt", "ld"], status=lines.append, variant="smoke", overrides=broken, lanes=2)
    assert lines[0].startswith("running convirt | ld side by side")
    for name in ("convirt", "ld"):
        assert any(line.startswith(f"{name}: failed: ") for line in lines)
        assert "Traceback" in (tmp_path / "logs" / f"{name}.log").read_text()
    assert not (tmp_path / "index.html").exists()


@pytest.mark.slow
def test_the_whole_demo_side_by_side(tmp_path):
    lines, _ = _run_demo(tmp_path, list(demo.DEMOS), lanes=2)
    assert lines[0].startswith("running dgm | convirt then ld side by side")  # Two processes, logs in W/logs.
    for name in demo.DEMOS:
        assert f"{name}: training 3 steps into {tmp_path / name} (compiling first)" in lines
        assert any(line.startswith(f"{name}: done; ") for line in lines)
        assert (tmp_path / "logs" / f"{name}.log").is_file()


def test_demo_method_errors_are_one_line():
    proc = run_cli("demo", "--workdir", "unused", "--methods", "dgm,foo", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "cxr-jax demo: config error: --methods 'dgm,foo': expected a comma-separated subset of dgm,convirt,ld"]
