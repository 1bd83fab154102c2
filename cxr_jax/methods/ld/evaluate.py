"""LD evaluation: one-shot landmark localisation on a set with landmarks, against two baselines.

The template is the first image of `data.template` with all its landmarks; every image of `data.eval` with
all its landmarks is a query. Errors are Euclidean distances in each query's own pixels (the frame of the
landmark CSVs, e.g. 512 px for ../shared/data/jsrt): `landmark_mre_px` (mean radial error) and
`landmark_sdr_{r}px` (the fraction within r px), then the same for `copy_` (the template's coordinates),
`ncc_` (raw-intensity patch matching) and, with `landmarks.local_window`, `aligned_` (the moved template before
the local search). The template image is never its own query. Where both sets have heart masks (jsrt), the heart
centre (LD's own chest landmark, `shared.heart_centre`) is located too: `{name}_heart_centre_error_px`.
`landmarks.png` shows the best and worst queries (errors in the queries' own pixels).

With the shape prior (`shape.weight` > 0), cluster channel 0 > 0.5 is a segmentation of `shape.structure`:
`shape_dice_<structure>` on the images of `data.eval` with that mask (the official test's threshold and
hard Dice), and `shape.png` shows its outlines. Its baseline `shape_mean_mask_dice_<structure>` never looks
at the image: the prior's own masks (`data.shape_masks`) averaged, > 0.5, the same for every image.
`shape_placed_dice_<structure>` keeps that average shape but places it on each image where it best fits
channel 0 (`placement.py`): the prior's shape, LD's position.
"""

from __future__ import annotations

import functools
import pathlib

import jax.numpy as jnp
import numpy as np

from cxr_jax import runs
from cxr_jax.config import ConfigError
from cxr_jax.data import sources
from cxr_jax.data.sources import fileio
from cxr_jax.methods.ld import landmarks as lm
from cxr_jax.methods.ld import pictures, placement
from cxr_jax.methods.segment import evaluate as segment_eval

RADII = (5, 10, 20)


def evaluate(method, state, mesh, outdir: pathlib.Path) -> dict[str, float]:
    """Landmark metrics of LD and the baselines; writes `landmarks.png` to `outdir`."""
    config = method.config
    loaded = {name: sources.load(config.data[name], image_size=config.image_size, seed=config.seed)
              for name in ("template", "eval")}
    template, queries = (with_landmarks(loaded[name], config.data[name]) for name in ("template", "eval"))
    t_image = template["image"][0]
    queries = without_template(queries, t_image, config.data.eval)
    num = template["landmarks"].shape[1]  # Contour points; the heart centre, where known, is one more.
    heart = "heart_centre" in template and "heart_centre" in queries
    t_xy, truth = (points(d, heart_centre=heart) for d in (template, queries))
    t_xy = t_xy[0]
    keys = lm.template_keys(method, state, mesh, t_image, t_xy)
    found = lm.locate(method, state, mesh, queries["image"], keys, t_xy)
    predictions = {
        "landmark": found["landmark"],
        "copy": np.broadcast_to(t_xy, truth.shape),
        "ncc": ncc(queries["image"], t_image, t_xy, patch=config.landmarks.ncc_patch),
    }
    if config.landmarks.align != "none" and config.landmarks.local_window > 0:
        predictions["aligned"] = found["expected"]  # The moved template alone, before the local search.
    result, per_query = {}, {}
    for name, xy in predictions.items():
        errors = radial_errors(xy, truth, queries["orig_size"], config.image_size)
        result.update(landmark_metrics(errors[:, :num], prefix=name))
        per_query[name] = errors[:, :num].mean(axis=1)
        if heart:
            result[f"{name}_heart_centre_error_px"] = float(errors[:, num].mean())
    result.update(num_queries=float(len(truth)), num_landmarks=float(num))
    _figure(queries["image"], truth[:, :num], {k: predictions[k][:, :num] for k in ("landmark", "copy")},
            per_query, outdir / "landmarks.png")
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
    segment_eval.plot_overlays(images[..., 0], pred[..., None].astype(np.uint8), outdir / "shape.png",
                               structures=(config.shape.structure,))
    dice = segment_eval.dice_scores(pred[..., None], truth[..., None])[:, 0]
    prior_mean = prior.mean(axis=0)
    mean_mask = np.broadcast_to(prior_mean > 0.5, pred.shape)
    baseline = segment_eval.dice_scores(mean_mask[..., None], truth[..., None])[:, 0]
    maps = placement.candidates_for(prior_mean, config.shape)
    placed = segment_eval.dice_scores(placement.place(maps, pred)[..., None], truth[..., None])[:, 0]
    name = config.shape.structure
    return {f"shape_dice_{name}": float(dice.mean()), f"shape_mean_mask_dice_{name}": float(baseline.mean()),
            f"shape_placed_dice_{name}": float(placed.mean()), "shape_num_images": float(len(dice))}


def _channel0(method, state, batch):
    return method.predict(state, batch)["assignment"][..., 0]


def landmark_metrics(errors: np.ndarray, *, prefix: str) -> dict[str, float]:
    """`{prefix}_mre_px` and `{prefix}_sdr_{r}px` of radial errors [N, L] in pixels."""
    return {f"{prefix}_mre_px": float(errors.mean()),
            **{f"{prefix}_sdr_{r}px": float(np.mean(errors <= r)) for r in RADII}}


def with_landmarks(data: dict[str, np.ndarray], spec) -> dict[str, np.ndarray]:
    """In-memory images, landmarks, original sizes (and heart centres) of the examples with every landmark."""
    if "landmarks" not in data:
        raise ConfigError(f"data source {spec.source!r} ({spec.path}) has no landmarks; LD's evaluation needs "
                          "a set in a layout with landmarks (e.g. jsrt)")
    if "image" not in data:
        raise ConfigError("LD's evaluation matches raw pixels (ncc): set data.template.stream and "
                          "data.eval.stream to False")
    keep = np.isfinite(data["landmarks"]).all(axis=(1, 2))
    keys = ["image", "landmarks", "orig_size"]
    if "heart_centre" in data and np.isfinite(data["heart_centre"][keep]).all():
        keys.append("heart_centre")
    if not keep.any():
        raise sources.DataError(f"data source {spec.source!r} ({spec.path}): no image has all its landmarks")
    return {k: data[k][keep] for k in keys}


def without_template(queries: dict[str, np.ndarray], template: np.ndarray, spec) -> dict[str, np.ndarray]:
    """The queries other than the template image itself (it is never its own query)."""
    keep = np.array([not np.array_equal(image, template) for image in queries["image"]])
    if not keep.any():
        raise sources.DataError(f"data source {spec.source!r} ({spec.path}): no query besides the template")
    return {k: v[keep] for k, v in queries.items()}


def points(data: dict[str, np.ndarray], *, heart_centre: bool) -> np.ndarray:
    """The landmarks [N, K, 2], with the heart centre appended as point K + 1 if `heart_centre`."""
    if not heart_centre:
        return data["landmarks"]
    return np.concatenate([data["landmarks"], data["heart_centre"]], axis=1)


def radial_errors(xy: np.ndarray, truth: np.ndarray, orig_sizes: np.ndarray, size: int) -> np.ndarray:
    """Distances [N, L] between points xy and truth [N, L, 2] of the square frame, in each image's own pixels."""
    def original(p):
        return np.stack([fileio.original_coords(q, tuple(o), size) for q, o in zip(p, orig_sizes)])

    return np.linalg.norm(original(xy) - original(truth), axis=-1)


def ncc(images: np.ndarray, template: np.ndarray, xy: np.ndarray, *, patch: int, chunk: int = 8) -> np.ndarray:
    """The ncc baseline's (x, y) [N, L, 2], a few queries at a time."""
    out = []
    for i in range(0, len(images), chunk):
        scores = lm.ncc_scores(jnp.asarray(images[i:i + chunk, ..., 0]), jnp.asarray(template[..., 0]),
                               jnp.asarray(xy), patch=patch)
        out.append(np.asarray(lm.peaks(scores)))
    return np.concatenate(out)


def _figure(images: np.ndarray, truth: np.ndarray, predictions: dict[str, np.ndarray],
            errors: dict[str, np.ndarray], path: pathlib.Path, num: int = 3) -> None:
    """The best and worst queries by LD's mean error (`errors`: per query, original pixels), with the copy."""
    order = np.argsort(errors["landmark"])
    chosen = list(dict.fromkeys([*order[:num], *order[::-1][:num]]))
    points = {"ground truth": truth[chosen], "LD": predictions["landmark"][chosen],
              "template copy": predictions["copy"][chosen]}
    titles = [f"query {i}: LD {errors['landmark'][i]:.1f} px, copy {errors['copy'][i]:.1f} px" for i in chosen]
    pictures.landmark_figure(images[chosen], points, path, titles=titles)
