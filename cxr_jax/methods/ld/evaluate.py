"""LD evaluation: one-shot landmark localisation on a set with landmarks, against two baselines.

The template is the first image of `data.template` with all its landmarks; every image of `data.eval` with
all its landmarks is a query. Errors are Euclidean distances in each query's own pixels (the frame of the
landmark CSVs, e.g. 512 px for ../shared/data/jsrt): `landmark_mre_px` (mean radial error) and
`landmark_sdr_{r}px` (the fraction within r px), then the same for `copy_` (the template's coordinates) and
`ncc_` (raw-intensity patch matching). `landmarks.png` shows the worst and best queries.

With the shape prior (`shape.weight` > 0), cluster channel 0 > 0.5 is a segmentation of `shape.structure`:
`shape_dice_<structure>` on the images of `data.eval` with that mask (the official test's threshold and
hard Dice), and `shape.png` shows its outlines. Its baseline `shape_mean_mask_dice_<structure>` never looks
at the image: the prior's own masks (`data.shape_masks`) averaged, > 0.5, the same for every image.
"""

from __future__ import annotations

import functools
import pathlib

import jax.numpy as jnp
import numpy as np
from PIL import Image

from cxr_jax import runs
from cxr_jax.config import ConfigError
from cxr_jax.data import sources
from cxr_jax.data.sources import fileio
from cxr_jax.methods.ld import landmarks as lm
from cxr_jax.methods.segment import evaluate as segment_eval

RADII = (5, 10, 20)


def evaluate(method, state, mesh, outdir: pathlib.Path) -> dict[str, float]:
    """Landmark metrics of LD and both baselines; writes `landmarks.png` to `outdir`."""
    config = method.config
    loaded = {name: sources.load(config.data[name], image_size=config.image_size, seed=config.seed)
              for name in ("template", "eval")}
    template, queries = (_with_landmarks(loaded[name], config.data[name]) for name in ("template", "eval"))
    t_image, t_xy = template["image"][0], template["landmarks"][0]
    keys = lm.template_keys(method, state, mesh, t_image, t_xy)
    predictions = {
        "landmark": lm.locate(method, state, mesh, queries["image"], keys),
        "copy": np.broadcast_to(t_xy, queries["landmarks"].shape),
        "ncc": _ncc(queries["image"], t_image, t_xy, patch=config.landmarks.ncc_patch),
    }
    size = config.image_size
    truth = _original(queries["landmarks"], queries["orig_size"], size)
    result = {}
    for name, xy in predictions.items():
        errors = np.linalg.norm(_original(xy, queries["orig_size"], size) - truth, axis=-1)
        result.update(landmark_metrics(errors, prefix=name))
        if name == "landmark":
            _figure(queries["image"], queries["landmarks"], xy, errors, outdir / "landmarks.png")
    result.update(num_queries=float(len(truth)), num_landmarks=float(truth.shape[1]))
    if config.shape.weight > 0:
        prior = method.shape_masks()[..., 0]
        result.update(shape_dice(method, state, mesh, loaded["eval"], outdir, prior=prior))
    return result


def shape_dice(method, state, mesh, data: dict[str, np.ndarray], outdir: pathlib.Path, *,
               prior: np.ndarray) -> dict[str, float]:
    """Hard Dice against `mask_<shape.structure>` of the loaded `data.eval`; writes shape.png.

    Scores cluster channel 0 > 0.5, and (the baseline) the mean of the prior's masks [M, S, S] > 0.5.
    """
    config = method.config
    masked = sources.with_masks(data, (config.shape.structure,), config.data.eval)
    if "image" not in masked:
        raise ConfigError("the shape prior's score needs in-memory eval images: set data.eval.stream to False")
    images, truth = masked["image"], masked["masks"][..., 0]
    channel0 = functools.partial(_channel0, method)
    probs, rows = runs.predict(method, state, {"image": images}, mesh, fn=channel0)
    pred = probs[np.argsort(rows)] > 0.5
    segment_eval.plot_overlays(images[..., 0], pred[..., None].astype(np.uint8), outdir / "shape.png")
    dice = segment_eval.dice_scores(pred[..., None], truth[..., None])[:, 0]
    mean_mask = np.broadcast_to(prior.mean(axis=0) > 0.5, pred.shape)
    baseline = segment_eval.dice_scores(mean_mask[..., None], truth[..., None])[:, 0]
    name = config.shape.structure
    return {f"shape_dice_{name}": float(dice.mean()), f"shape_mean_mask_dice_{name}": float(baseline.mean()),
            "shape_num_images": float(len(dice))}


def _channel0(method, state, batch):
    return method.predict(state, batch)["assignment"][..., 0]


def landmark_metrics(errors: np.ndarray, *, prefix: str) -> dict[str, float]:
    """`{prefix}_mre_px` and `{prefix}_sdr_{r}px` of radial errors [N, L] in pixels."""
    return {f"{prefix}_mre_px": float(errors.mean()),
            **{f"{prefix}_sdr_{r}px": float(np.mean(errors <= r)) for r in RADII}}


def _with_landmarks(data: dict[str, np.ndarray], spec) -> dict[str, np.ndarray]:
    """In-memory images, landmarks and original sizes of the loaded examples whose landmarks are all known."""
    if "landmarks" not in data:
        raise ConfigError(f"data source {spec.source!r} ({spec.path}) has no landmarks; LD's evaluation needs "
                          "a set in a layout with landmarks (e.g. jsrt)")
    if "image" not in data:
        raise ConfigError("LD's evaluation matches raw pixels (ncc): set data.template.stream and "
                          "data.eval.stream to False")
    keep = np.isfinite(data["landmarks"]).all(axis=(1, 2))
    if not keep.any():
        raise sources.DataError(f"data source {spec.source!r} ({spec.path}): no image has all its landmarks")
    return {k: data[k][keep] for k in ("image", "landmarks", "orig_size")}


def _original(xy: np.ndarray, orig_sizes: np.ndarray, size: int) -> np.ndarray:
    return np.stack([fileio.original_coords(p, tuple(o), size) for p, o in zip(xy, orig_sizes)])


def _ncc(images: np.ndarray, template: np.ndarray, xy: np.ndarray, *, patch: int, chunk: int = 8) -> np.ndarray:
    """The ncc baseline's (x, y) [N, L, 2], a few queries at a time."""
    out = []
    for i in range(0, len(images), chunk):
        scores = lm.ncc_scores(jnp.asarray(images[i:i + chunk, ..., 0]), jnp.asarray(template[..., 0]),
                               jnp.asarray(xy), patch=patch)
        out.append(np.asarray(lm.peaks(scores)))
    return np.concatenate(out)


def _figure(images: np.ndarray, truth: np.ndarray, located: np.ndarray, errors: np.ndarray,
            path: pathlib.Path, num: int = 3) -> None:
    """The best and worst queries by mean error at the model's resolution: LD red, ground truth green."""
    order = np.argsort(errors.mean(axis=1))
    chosen = list(dict.fromkeys([*order[:num], *order[::-1][:num]]))
    panels = [np.asarray(lm.draw(images[i, ..., 0], {"ld": located[i], "truth": truth[i]}, radius=1))
              for i in chosen]
    Image.fromarray(np.concatenate(panels, axis=1)).save(path)
