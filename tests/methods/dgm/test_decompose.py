"""`cxr-jax decompose` end to end on a trained smoke DGM, with lung masks in the jsrt layout."""

import json

import numpy as np
import pytest
from PIL import Image

from cxr_jax.cli import main
from cxr_jax.data.sources import fileio


def _folder(root):
    """Two non-square images (48 × 64) and their left/right lung masks, as in ../shared/data/jsrt."""
    rng = np.random.default_rng(0)
    for part in ("images", "masks/left_lung", "masks/right_lung"):
        (root / part).mkdir(parents=True)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (48, 64), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        left, right = np.zeros((48, 64), np.uint8), np.zeros((48, 64), np.uint8)
        left[8:40, 6:28], right[8:40, 36:60] = 255, 255
        Image.fromarray(left).save(root / "masks/left_lung" / f"{name}.png")
        Image.fromarray(right).save(root / "masks/right_lung" / f"{name}.png")


def test_decompose_writes_images_and_boxes_in_both_coordinate_systems(dgm_run, tmp_path, capsys):
    _folder(tmp_path)
    out = tmp_path / "out"
    assert main.main(["decompose", "--workdir", str(dgm_run), str(tmp_path / "images"), "--out", str(out),
                      "--lung-masks", str(tmp_path / "masks"), "--config.saliency.min_area=1"]) == 0
    assert "wrote" in capsys.readouterr().out
    for name in ("a", "b"):
        for kind in ("normal", "residue", "heatmap", "saliency"):
            picture = Image.open(out / f"{name}_{kind}.png")
            assert picture.size == (256, 192), kind  # 64 × 48 enlarged 4 times: the longer side reaches 256.
        assert np.load(out / f"{name}_residue.npy").shape == (48, 64)
        record = json.loads((out / f"{name}.json").read_text())
        assert record["original_size"] == [48, 64] and record["image_size"] == 32
        # Lung boxes: the masks' rectangles, padded to 64 × 64 (8 rows on top) and halved, then mapped back.
        assert record["lung_boxes"] == [[3.0, 8.0, 14.0, 24.0], [18.0, 8.0, 30.0, 24.0]]
        assert record["lung_boxes_original"] == [[6.0, 8.0, 28.0, 40.0], [36.0, 8.0, 60.0, 40.0]]
        assert record["components"], "an untrained residue still has regions above its own Otsu threshold"
        for c in record["components"]:
            x0, y0, x1, y1 = c["box"]
            assert any(x0 < bx1 and bx0 < x1 and y0 < by1 and by0 < y1 for bx0, by0, bx1, by1 in record["lung_boxes"])
            np.testing.assert_allclose(c["box_original"], np.array(c["box"]) * 2 - [0, 8, 0, 8], atol=1e-4)


def test_decompose_maps_the_residue_back_to_the_input_size(dgm_run, tmp_path):
    """A 300 × 200 input without lung masks: PNGs and residue at its size, the residue where the model put it."""
    from scipy import ndimage

    from cxr_jax import parallel, runs

    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (200, 300), dtype=np.uint8)).save(tmp_path / "wide.png")
    out = tmp_path / "out"
    assert main.main(["decompose", "--workdir", str(dgm_run), str(tmp_path / "wide.png"), "--out", str(out)]) == 0
    for kind in ("normal", "residue", "heatmap", "saliency"):
        assert Image.open(out / f"wide_{kind}.png").size == (300, 200), kind
    residue = np.load(out / "wide_residue.npy")
    assert residue.dtype == np.float32 and residue.shape == (200, 300)
    # The model's residue of the padded 32 × 32 square, sampled back at its pixel centres inside the input.
    mesh = parallel.make_mesh()
    config, method, state, _ = runs.restore_run(dgm_run, "dgm", needed="a DGM run", mesh=mesh)
    _, pixels, _ = fileio.read_images([tmp_path / "wide.png"], config.image_size)
    outputs, _ = runs.predict(method, state, {"image": pixels}, mesh, fn=method.decompose)
    model = outputs["residue"][0, ..., 0]
    ys, xs = np.mgrid[:32, :32]
    xy = fileio.original_coords(np.stack([xs.ravel(), ys.ravel()], -1), (200, 300), 32)
    inside = (xy[:, 1] >= 0) & (xy[:, 1] <= 199)  # Rows 6 to 26; the rest is the square's padding.
    sampled = ndimage.map_coordinates(residue, [xy[inside, 1], xy[inside, 0]], order=1)
    error, spread = np.abs(sampled - model.ravel()[inside]), np.ptp(model)
    # Bilinear up, bilinear back: exact at model pixel centres but for the fine grid's own interpolation (a
    # shift by half a model pixel makes the mean error ~9 % of the spread on white noise).
    assert error.mean() < 0.02 * spread and error.max() < 0.1 * spread


def test_decompose_names_a_missing_mask(dgm_run, tmp_path, capsys):
    _folder(tmp_path)
    (tmp_path / "masks/right_lung/b.png").unlink()
    with pytest.raises(SystemExit, match="2"):
        main.main(["decompose", "--workdir", str(dgm_run), str(tmp_path / "images"), "--out", str(tmp_path / "o"),
                   "--lung-masks", str(tmp_path / "masks")])
    err = capsys.readouterr().err
    assert "no lung mask for" in err and "right_lung/b.png" in err
    assert not (tmp_path / "o").exists()  # Masks are checked before anything is written.


def test_original_coords_inverts_square_coords():
    xy = np.array([[3.0, 7.5], [60.0, 1.0]])
    for edges in (False, True):
        there = fileio.square_coords(xy, (48, 64), 32, edges=edges)
        np.testing.assert_allclose(fileio.original_coords(there, (48, 64), 32, edges=edges), xy, atol=1e-5)
