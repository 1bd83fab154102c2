"""One-shot landmarks: averaging, sampling, peaks and ncc in closed form; the command and the evaluator."""

import functools
import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cxr_jax.cli import main
from cxr_jax.data import sources
from cxr_jax.data.sources import fileio, shared
from cxr_jax.methods.ld import evaluate as ld_eval
from cxr_jax.methods.ld import geometry
from cxr_jax.methods.ld import landmarks as lm
from tests.conftest import ROOT

SMOKE = f"{ROOT / 'configs' / 'ld.py'}:smoke"
RNG = np.random.default_rng(0)


def test_center_sensitive_is_a_renormalised_gaussian_average():
    emb = RNG.normal(size=(2, 9, 9, 3))
    got = lm.center_sensitive(jnp.asarray(emb, jnp.float32), sigma=1.5)
    y, x = 4, 2
    d2 = (np.arange(9)[:, None] - y) ** 2 + (np.arange(9)[None, :] - x) ** 2
    w = np.exp(-d2 / (2 * 1.5**2)) * ((np.abs(np.arange(9) - y) <= 4.5)[:, None]) * (
        (np.abs(np.arange(9) - x) <= 4.5)[None, :])
    want = np.einsum("hw,bhwd->bd", w, emb)
    want /= np.linalg.norm(want, axis=-1, keepdims=True)
    np.testing.assert_allclose(got[:, y, x], want, rtol=1e-5)


def test_sample_is_exact_on_linear_maps_and_peaks_find_subpixel_centres():
    yy, xx = np.mgrid[0:8, 0:8].astype(np.float32)
    plane = np.stack([2 * xx + 1, -yy + 3 * xx], -1)
    xy = np.array([[1.25, 2.5], [6.9, 0.1], [0.0, 7.0]], np.float32)
    want = np.stack([2 * xy[:, 0] + 1, -xy[:, 1] + 3 * xy[:, 0]], -1)
    np.testing.assert_allclose(lm.sample(jnp.asarray(plane), jnp.asarray(xy)), want, rtol=1e-6)
    scores = np.zeros((1, 2, 10, 10), np.float32)
    scores[0, 0, 3, 6] = scores[0, 0, 3, 7] = 1.0  # A ridge between x = 6 and 7 at y = 3.
    scores[0, 1, 8, 1] = 1.0
    np.testing.assert_array_equal(lm.peaks(jnp.asarray(scores))[0, 1], [1, 8])
    refined = np.asarray(lm.peaks(jnp.asarray(scores), refine=1, temperature=1e-3))
    np.testing.assert_allclose(refined[0], [[6.5, 3.0], [1.0, 8.0]], atol=1e-4)


def test_ncc_matches_a_float64_recomputation_and_finds_a_shifted_copy():
    template = RNG.uniform(size=(16, 16)).astype(np.float32)
    query = np.roll(template, (2, -3), axis=(0, 1)) * 0.5 + 0.2  # Shifted, contrast and brightness changed.
    xy = np.array([[8, 7], [5, 10]], np.float32)
    scores = np.asarray(lm.ncc_scores(jnp.asarray(query[None]), jnp.asarray(template), jnp.asarray(xy), patch=5))
    t = template[5:10, 6:11].astype(np.float64)  # Around (x=8, y=7).
    q = query[8:13, 2:7].astype(np.float64)  # Around (x=4, y=10).
    want = np.sum((q - q.mean()) * (t - t.mean())) / (np.linalg.norm(q - q.mean()) * np.linalg.norm(t - t.mean()))
    np.testing.assert_allclose(scores[0, 0, 10, 4], want, rtol=1e-4)
    found = np.asarray(lm.peaks(jnp.asarray(scores)))[0]
    np.testing.assert_array_equal(found, xy + [-3, 2])  # Both points moved with the image.
    np.testing.assert_allclose(scores[0, 0, 9, 5], 1.0, rtol=1e-4)


@pytest.mark.parametrize("kind", ["similarity", "affine"])
def test_fit_transform_recovers_a_transform_despite_wrong_matches(kind):
    source = RNG.uniform(10, 110, size=(120, 2))
    a = np.array([[1.1, -0.2], [0.2, 1.1]]) if kind == "similarity" else np.array([[1.05, 0.1], [-0.05, 0.9]])
    target = source @ a.T + [7.0, -4.0]
    noisy = target.copy()
    wrong = RNG.choice(120, 40, replace=False)  # A third of the matches anywhere in the image.
    noisy[wrong] = RNG.uniform(0, 128, size=(40, 2))
    moved = np.asarray(geometry.fit_transform(jnp.asarray(source, jnp.float32), jnp.asarray(noisy, jnp.float32),
                                              kind=kind))
    np.testing.assert_allclose(moved, target, atol=1e-2)
    plain = np.asarray(geometry.fit_transform(jnp.asarray(source, jnp.float32), jnp.asarray(noisy, jnp.float32),
                                              kind=kind, keep=1.0))  # Untrimmed: the wrong matches pull it off.
    assert np.abs(plain - target).max() > 1.0


def test_similarity_cannot_shear():
    source = jnp.asarray(RNG.uniform(0, 50, size=(30, 2)), jnp.float32)
    sheared = source @ jnp.array([[1.0, 0.5], [0.0, 1.0]]).T
    affine = geometry.fit_transform(source, sheared, kind="affine", keep=1.0)
    similarity = geometry.fit_transform(source, sheared, kind="similarity", keep=1.0)
    np.testing.assert_allclose(affine, sheared, atol=1e-3)
    assert np.abs(np.asarray(similarity - sheared)).max() > 1.0


def test_within_keeps_a_disk_and_searches_only_there():
    scores = np.zeros((1, 2, 12, 12), np.float32)
    scores[0, :, 1, 1] = 1.0  # The global best for both points, far from the expected positions.
    scores[0, 0, 8, 9] = scores[0, 1, 3, 10] = 0.5
    centres = jnp.asarray([[[8.0, 7.0], [30.0, 3.0]]])  # (x, y); the second is off the map and gets clamped.
    kept = np.asarray(geometry.within(jnp.asarray(scores), centres, 2.0))
    yy, xx = np.mgrid[0:12, 0:12]
    np.testing.assert_array_equal(kept[0, 0] > -1, (xx - 8) ** 2 + (yy - 7) ** 2 <= 4)
    np.testing.assert_array_equal(kept[0, 1] > -1, (xx - 11) ** 2 + (yy - 3) ** 2 <= 4)
    np.testing.assert_array_equal(lm.peaks(jnp.asarray(kept))[0], [[9, 8], [10, 3]])


def test_search_moves_the_template_past_wrong_matches_and_windows_exclude_them():
    template = np.array([[6, 6], [20, 5], [25, 12], [8, 20], [15, 15], [22, 24], [5, 27], [12, 9], [18, 21],
                         [27, 27]], np.float32)
    truth = template + [3, 2]  # The query is the template shifted.
    pooled = np.zeros((1, 32, 32, 10), np.float32)
    for i, (x, y) in enumerate(truth.astype(int)):
        pooled[0, y, x, i] = 0.9
    for i, (x, y) in {1: (2, 30), 4: (30, 2), 7: (30, 30)}.items():  # Three points match better far away.
        pooled[0, y, x, i] = 1.0
    run = functools.partial(lm.search, jnp.asarray(pooled), keys=jnp.eye(10), template_xy=jnp.asarray(template),
                            refine=0, temperature=0.05, keep=0.5)
    plain = np.asarray(run(window=0.0, align="none", local_window=0.0)["landmark"][0])
    assert (np.abs(plain - truth).max(axis=1) > 5).sum() == 3
    moved = run(window=0.0, align="similarity", local_window=0.0)
    np.testing.assert_allclose(moved["landmark"][0], truth, atol=1e-3)  # The shape-constrained answer.
    np.testing.assert_allclose(run(window=6.0, align="none", local_window=0.0)["landmark"][0], truth)
    local = run(window=0.0, align="affine", local_window=2.0)
    np.testing.assert_allclose(local["landmark"][0], truth, atol=1e-3)


def test_heart_centre_is_the_mean_column_and_its_mean_row():
    mask = np.zeros((20, 20), np.uint8)
    mask[4:10, 3:6] = 255  # Columns 3-5, rows 4-9.
    mask[12:14, 5] = 255  # Column 5 also has rows 12-13; the mean column moves right of 4.
    x = (3 * 6 + 4 * 6 + 5 * 8) / 20
    np.testing.assert_allclose(shared.heart_centre(mask), [[x, 6.5]])  # Nearest column 4: rows 4-9.
    assert np.isnan(shared.heart_centre(np.zeros((4, 4)))).all()


def test_landmarks_command_finds_the_template_in_itself(ld_run, tmp_path):
    image = (RNG.uniform(size=(40, 30)) * 255).astype(np.uint8)  # Not square: exercises the padding.
    Image.fromarray(image).save(tmp_path / "t.png")
    points = np.array([[5.0, 8.0], [20.0, 30.0], [12.0, 17.0]])
    lines = ["structure,index,x,y"] + [f"a,{i},{x},{y}" for i, (x, y) in enumerate(points)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main.main(["landmarks", "--workdir", str(ld_run), "--template", str(tmp_path / "t.png"),
                      "--template-landmarks", str(tmp_path / "t.csv"), "--out", str(out),
                      str(tmp_path / "t.png"), "--config.landmarks.refine=0"]) == 0
    names, found = lm.read_points(out / "t.csv")
    assert names == [("a", 0), ("a", 1), ("a", 2)]
    # Self-matching at 32 px (40 px / 32 = 1.25 px per model pixel): each point comes back to within a model
    # pixel of where it was sampled (bilinearly, between pixels; a 4-step model's embedding is smooth, so a
    # neighbour can score as high). A wrong padding offset or scale would move points by 5 px or more.
    np.testing.assert_allclose(found, points, atol=2 * 1.25)
    assert Image.open(out / "t_landmarks.png").size == (30, 40)


def test_evaluate_takes_any_directory_in_the_jsrt_layout(ld_run, tmp_path, capsys):
    from tests.data.test_shared_layouts import _write_jsrt

    _write_jsrt(tmp_path / "set")  # Two images, A and B, with the same 120 landmarks.
    overrides = [f"--config.data.{spec}.{key}={value}" for spec in ("eval", "template")
                 for key, value in (("source", "jsrt"), ("path", tmp_path / "set"), ("split", "all"))]
    assert main.main(["evaluate", "--config", SMOKE, "--workdir", str(ld_run), *overrides]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_queries"] == 1 and result["copy_mre_px"] == 0.0  # Query B has template A's points.
    assert np.isfinite(result["landmark_mre_px"]) and np.isfinite(result["ncc_mre_px"])
    assert result["copy_heart_centre_error_px"] == 0.0  # Same heart masks; the template is not its own query.
    assert np.isfinite(result["landmark_heart_centre_error_px"])


def test_bad_landmark_csv_names_the_file(tmp_path):
    (tmp_path / "t.csv").write_text("structure,index,x\na,0,1\n")
    with pytest.raises(sources.DataError, match="t.csv.*missing required column"):
        lm.read_points(tmp_path / "t.csv")


def test_evaluator_reports_ld_and_both_baselines(ld_run):
    from cxr_jax import config as config_lib
    from cxr_jax import runs

    config = config_lib.load(SMOKE, ["train.num_steps=4"])
    result = runs.evaluate(config, ld_run)
    for prefix in ("landmark", "copy", "ncc"):
        assert result[f"{prefix}_mre_px"] >= 0
        assert 0 <= result[f"{prefix}_sdr_5px"] <= result[f"{prefix}_sdr_10px"] <= result[f"{prefix}_sdr_20px"] <= 1
    template = sources.load(config.data.template, image_size=32, seed=0)
    queries = sources.load(config.data.eval, image_size=32, seed=0)
    errors = [np.linalg.norm(fileio.original_coords(template["landmarks"][0], tuple(template["orig_size"][0]), 32)
                             - fileio.original_coords(q, tuple(o), 32), axis=-1)
              for q, o in zip(queries["landmarks"], queries["orig_size"])]
    np.testing.assert_allclose(result["copy_mre_px"], np.mean(errors), rtol=1e-5)
    assert result["num_queries"] == len(queries["landmarks"])
    assert (ld_run / "eval" / "landmarks.png").is_file()
    np.testing.assert_allclose(list(ld_eval.landmark_metrics(np.array([[1.0, 6.0], [12.0, 30.0]]),
                                                             prefix="x").values()), [12.25, 0.25, 0.5, 0.75])
