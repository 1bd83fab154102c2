"""Segmentation evaluation: `dice_<structure>` and their mean `dice_mean` on the eval split, and an overlay figure.

Dice is computed per image on the thresholded (p > 0.5) prediction at the run's resolution and averaged over
the images that have a mask (an image with an empty mask and an empty prediction scores 1).
"""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

from cxr_jax import runs
from cxr_jax.methods.segment import segmenter as segment
from cxr_jax.metrics import image_grid


def evaluate(method, state, mesh, outdir: pathlib.Path) -> dict[str, float]:
    """`dice_<structure>`, their mean `dice_mean` and `num_images` on `data.eval`; writes `overlays.png` to `outdir`."""
    config = method.config
    data = method.examples(config.data.eval)
    key = "image" if "image" in data else "file"
    probs, rows = runs.predict(method, state, {key: data[key]}, mesh, on_error=config.data.eval.on_error)
    truth = data["masks"][rows]
    scores = dice_scores(probs > 0.5, truth)
    result = {f"dice_{s}": float(scores[:, c].mean()) for c, s in enumerate(config.model.structures)}
    result["dice_mean"] = float(scores.mean())  # One number for eval.best_metric, whatever the structures.
    result["num_images"] = float(len(rows))
    if key == "image":
        plot_overlays(data["image"][rows, ..., 0], (probs > 0.5).astype(np.uint8), outdir / "overlays.png",
                      structures=config.model.structures)
    return result


def dice_scores(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Hard Dice 2|P∩G| / (|P| + |G|) per image and channel [N, C] of boolean masks [N, H, W, C] (1 if both empty)."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    overlap = np.sum(pred & truth, axis=(1, 2))
    total = np.sum(pred, axis=(1, 2)) + np.sum(truth, axis=(1, 2))
    return np.where(total > 0, 2 * overlap / np.maximum(total, 1), 1.0)


def plot_overlays(images: np.ndarray, masks: np.ndarray, path: pathlib.Path, *, structures, most: int = 8) -> None:
    """The first `most` images with their predicted outlines, side by side (≥ 256 px each), under a legend."""
    tiles = [np.asarray(segment.overlay(x, m)) for x, m in zip(images[:most], masks[:most])]
    Image.fromarray(image_grid([tiles], titles=(segment.legend(structures),))).save(path)
