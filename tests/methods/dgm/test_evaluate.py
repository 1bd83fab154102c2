"""DGM's anomaly metrics against brute-force NumPy, `cxr-jax evaluate` on a smoke run, evaluation in training."""

import json

import ml_collections
import numpy as np
import pytest
from PIL import Image

from cxr_jax import checkpoint, metrics
from cxr_jax.cli import main
from cxr_jax.methods.dgm import evaluate as dgm_eval
from tests.conftest import ROOT, event_tags

SMOKE = f"{ROOT / 'configs' / 'dgm.py'}:smoke"
CFG = ml_collections.ConfigDict(dict(threshold="otsu", percentile=95.0, polarity="abs", min_area=1,
                                     image_top_fraction=0.05, smooth_sigma=0.0, pointing_margin=0.0))


def _planted(n=6, size=16, seed=0):
    """Half the images abnormal, each with a square lesion; all with the same two lung rectangles."""
    rng = np.random.default_rng(seed)
    labels = np.array([0, 1] * (n // 2))
    lesion = np.zeros((n, size, size), np.uint8)
    box = np.full((n, 4), np.nan, np.float32)
    lungs = np.zeros((n, size, size), np.uint8)
    lungs[:, 2:14, 1:7], lungs[:, 2:14, 9:15] = 1, 1
    for i in np.flatnonzero(labels):
        y, x = rng.integers(3, 10), rng.integers(2, 4)
        lesion[i, y:y + 3, x:x + 3] = 1
        box[i] = (x, y, x + 3, y + 3)
    return {"label": labels, "mask_lesion": lesion, "mask_lungs": lungs, "box": box}


def test_perfect_maps_score_one_everywhere():
    data = _planted()
    maps = data["mask_lesion"].astype(float) * 0.8
    result, _ = dgm_eval.anomaly_metrics(maps, data, CFG)
    for key in ("image_auc", "pixel_auroc", "pixel_ap", "best_dice", "hit_rate"):
        assert result[key] == pytest.approx(1.0), key
    assert result["num_lesions"] == 3
    assert result["hit_rate_chance"] == pytest.approx(9 / 144)  # Each 3×3 lesion box in 144 lung pixels.
    assert result["pointing_accuracy"] == 1.0
    # Disc of radius 1.5 at the 3×3 box's centre: the 9 pixel centres at distance ≤ 1.414 (corners in).
    assert result["pointing_chance"] == pytest.approx(9 / 144)


def test_pointing_matches_a_loop_over_pixels_and_smoothing_keeps_blobs():
    data = _planted(n=8, seed=3)
    rng = np.random.default_rng(4)
    maps = rng.normal(0, 0.3, data["mask_lesion"].shape) + 0.6 * data["mask_lesion"]
    cfg = ml_collections.ConfigDict({**CFG.to_dict(), "pointing_margin": 1 / 16})  # 1 px at 16 px.
    result, _ = dgm_eval.anomaly_metrics(maps, data, cfg)
    hits, chance = [], []
    for m, lungs, box in zip(np.abs(maps), data["mask_lungs"], data["box"]):
        if np.isnan(box).any():
            continue
        cx, cy, radius = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, 1.5 + 1.0
        inside = [(m[y, x], y, x) for y in range(16) for x in range(16) if lungs[y, x]]
        _, y, x = max(inside)
        hits.append((x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2 <= radius**2)
        disc = [(x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2 <= radius**2 for _, y, x in inside]
        chance.append(np.mean(disc))
    assert result["pointing_accuracy"] == pytest.approx(np.mean(hits))
    assert result["pointing_chance"] == pytest.approx(np.mean(chance))
    # Smoothing averages the noise away and keeps the 3×3 blobs: pixel AUROC rises.
    smooth = ml_collections.ConfigDict({**cfg.to_dict(), "smooth_sigma": 1.0})
    assert dgm_eval.anomaly_metrics(maps, data, smooth)[0]["pixel_auroc"] > result["pixel_auroc"]


def test_noisy_maps_match_brute_force_numpy():
    data = _planted(seed=1)
    rng = np.random.default_rng(2)
    maps = rng.normal(0, 0.3, data["mask_lesion"].shape) + 0.5 * data["mask_lesion"]
    result, scored = dgm_eval.anomaly_metrics(maps, data, CFG)
    s, t = np.abs(maps).ravel(), data["mask_lesion"].ravel() > 0
    pos, neg = s[t], s[~t]
    auroc = (np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])) / (len(pos) * len(neg))
    assert result["pixel_auroc"] == pytest.approx(auroc, rel=1e-9)
    dice = max(2 * np.sum((s >= c) & t) / (np.sum(s >= c) + np.sum(t)) for c in np.unique(s))
    assert result["best_dice"] == pytest.approx(dice, rel=1e-9)
    # Image score: the mean of the top 5 % of |map| inside the lungs (144 pixels → top 7).
    inside = np.abs(maps[0])[data["mask_lungs"][0] > 0]
    assert scored["image_scores"][0] == pytest.approx(np.sort(inside)[-7:].mean())


def test_evaluate_cli_writes_metrics_and_cases(dgm_run):
    assert main.main(["evaluate", "--config", SMOKE, "--workdir", str(dgm_run)]) == 0
    metrics = json.loads((dgm_run / "eval" / "metrics.json").read_text())
    for key in ("image_auc", "pixel_auroc", "pixel_ap", "best_dice", "hit_rate"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["num_images"] == 32
    cases = Image.open(dgm_run / "eval" / "cases.png")
    assert cases.width >= 4 * 256 and cases.height >= 2 * 256  # Four columns of panels ≥ 256 px, two rows or more.
    # The baseline: recompute its pixel AUROC from the restored autoencoder, outside the evaluator.
    from sklearn import metrics as skm

    from cxr_jax import config as config_lib
    from cxr_jax.data import sources
    from cxr_jax.methods.dgm import model as dgm_models
    from tests.conftest import final_state

    config = config_lib.load(SMOKE)
    state, _ = final_state(SMOKE, dgm_run)
    data = sources.load(config.data.eval, image_size=config.image_size, seed=config.seed)
    z = data["image"].astype(np.float32) / 127.5 - 1.0
    ae = dgm_models.AutoEncoder(config.model.ae.dim, config.model.ae.n_down, config.model.ae.latent)
    error = np.abs(z - np.asarray(ae.apply({"params": state.params["ae"]}, z)))[..., 0]
    want = skm.roc_auc_score(data["mask_lesion"].ravel() > 0, error.ravel())
    assert metrics["ae_pixel_auroc"] == pytest.approx(want, abs=1e-6)
    assert {"ae_image_auc", "ae_best_dice", "ae_hit_rate", "ae_hit_rate_chance"} <= set(metrics)
    for prefix in ("", "ae_"):
        assert metrics[f"{prefix}image_auc_ci_low"] <= metrics[f"{prefix}image_auc"] <= metrics[
            f"{prefix}image_auc_ci_high"]


def test_training_evaluates_keeps_the_best_step_and_draws_samples(dgm_run):
    history = metrics.read_jsonl(dgm_run / "eval" / "history.jsonl")
    assert [r["step"] for r in history] == [2, 4]
    assert {"image_auc", "pixel_auroc", "ae_image_auc"} <= set(history[0])
    best = max((r["image_auc"], r["step"]) for r in history)[1]  # Ties: the later step.
    assert sorted(int(p.name) for p in (dgm_run / "checkpoints").iterdir() if p.name.isdigit()) == sorted({best, 4})
    reader = checkpoint.Checkpointer(dgm_run / "checkpoints", read_only=True, best_metric="image_auc")
    assert reader.resolve("best") == best
    # Rows input | normal | residue | saliency of 4 images, 32 px panels drawn at 256 px with 2 px gaps, under
    # a 26 px band of column titles.
    for step in (2, 4):
        assert np.asarray(Image.open(dgm_run / "samples" / f"{step}.png")).shape == (26 + 4 * 258 - 2, 4 * 258 - 2, 3)
    tags = event_tags(dgm_run / "tensorboard")
    assert tags[("image", "samples")] == tags[("scalar", "eval/image_auc")] == [2, 4]
    # `evaluate --checkpoint best` scores that step's state again: the same numbers as during training.
    assert main.main(["evaluate", "--config", SMOKE, "--workdir", str(dgm_run), "--checkpoint", "best"]) == 0
    result = json.loads((dgm_run / "eval" / "metrics.json").read_text())
    assert result["step"] == best
    assert result["image_auc"] == next(r["image_auc"] for r in history if r["step"] == best)
