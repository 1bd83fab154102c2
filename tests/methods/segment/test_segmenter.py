"""`cxr-jax segment` and the segment evaluator on a trained smoke run; mask geometry back to the original."""

import json

import numpy as np
import pytest
from PIL import Image

from cxr_jax.cli import main
from cxr_jax.data.sources import fileio
from cxr_jax.methods.segment import evaluate as segment_eval
from cxr_jax.methods.segment import segmenter as segment
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def segment_run(tmp_path_factory):
    from cxr_jax import config as config_lib
    from cxr_jax.train import loop

    workdir = tmp_path_factory.mktemp("segment_run")
    config = config_lib.load(f"{ROOT / 'configs' / 'segment.py'}:smoke", ["train.num_steps=2"])
    loop.train(config, workdir)
    return workdir


def test_to_original_inverts_read_gray_for_masks(tmp_path):
    mask = np.zeros((30, 20), np.uint8)
    mask[4:12, 3:9] = 255
    mask[20:27, 10:18] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    square, orig_size = fileio.read_gray(tmp_path / "m.png", 60, mask=True)  # 30 → 60: exact nearest up-sampling.
    assert orig_size == (30, 20)
    np.testing.assert_array_equal(segment.to_original(square, orig_size), mask > 0)


def test_dice_scores_against_counts():
    pred = np.zeros((2, 4, 4, 2), bool)
    truth = np.zeros((2, 4, 4, 2), bool)
    pred[0, :2, :, 0], truth[0, 1:3, :, 0] = True, True  # |P| = |G| = 8, overlap 4: Dice 0.5.
    truth[1, 0, 0, 0] = True  # Predicted nothing: 0.
    np.testing.assert_allclose(segment_eval.dice_scores(pred, truth), [[0.5, 1.0], [0.0, 1.0]])


def test_segment_command_writes_masks_at_the_original_size(segment_run, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("a", (40, 24)), ("b", (32, 32))):
        Image.fromarray(rng.integers(0, 255, shape, np.uint8)).save(images / f"{name}.png")
    out = tmp_path / "out"
    assert main.main(["segment", "--workdir", str(segment_run), str(images), "--out", str(out)]) == 0
    segmenter = segment.Segmenter(segment_run)
    for name, shape in (("a", (40, 24)), ("b", (32, 32))):
        written = np.asarray(Image.open(out / f"{name}_lungs.png"))
        assert written.shape == shape and set(np.unique(written)) <= {0, 255}
        square, orig = fileio.read_gray(images / f"{name}.png", 32)
        want = segment.to_original(segmenter.masks(square[None])[0, ..., 0], orig)
        np.testing.assert_array_equal(written > 0, want > 0)
        assert Image.open(out / f"{name}_overlay.png").size == shape[::-1]


def test_segmenter_gives_dgm_its_lung_boxes(segment_run, dgm_run, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32), np.uint8)).save(images / "x.png")
    out = tmp_path / "out"
    assert main.main(["decompose", "--workdir", str(dgm_run), str(images), "--out", str(out),
                      f"--config.saliency.lung_segmenter={segment_run}"]) == 0
    record = json.loads((out / "x.json").read_text())
    lungs = segment.Segmenter(segment_run).lungs(fileio.read_gray(images / "x.png", 32)[0][None])[0]
    from cxr_jax.methods.dgm import saliency

    assert record["lung_boxes"] == [list(b) for b in saliency.lung_boxes(lungs)]


def test_evaluate_reports_dice(segment_run):
    from cxr_jax import config as config_lib
    from cxr_jax import runs

    config = config_lib.load(f"{ROOT / 'configs' / 'segment.py'}:smoke", ["train.num_steps=2"])
    result = runs.evaluate(config, segment_run)
    assert 0.0 <= result["dice_lungs"] <= 1.0 and result["num_images"] == 32
    assert result["dice_mean"] == pytest.approx(result["dice_lungs"])  # One structure: its Dice is the mean.
    assert np.asarray(Image.open(segment_run / "eval" / "overlays.png")).shape[:2] == (26 + 256, 8 * 258 - 2)


def test_segment_rejects_a_run_of_another_method(dgm_run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main.main(["segment", "--workdir", str(dgm_run), str(tmp_path), "--out", str(tmp_path / "o")])
    assert "trained with method 'dgm'; a segmenter run" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_samples_draw_the_predicted_outlines_of_the_first_eval_images(segment_run):
    from cxr_jax import parallel, runs

    mesh = parallel.make_mesh()
    _, method, state, _ = runs.restore_run(segment_run, "segment", needed="a segment run", mesh=mesh)
    grid = method.samples(state, mesh)
    assert grid.shape == (26 + 256, 4 * 258 - 2, 3) and grid.dtype == np.uint8  # 4 images of 32 px at 256 px, legend.
