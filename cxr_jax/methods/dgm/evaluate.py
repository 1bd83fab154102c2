"""DGM evaluation: does the residue find disease?

From the eval split's residue maps r (scores |r| by default; `saliency.source`, `.polarity`, `.smooth_sigma`):
  image_auc    normal vs abnormal from each image's score: the mean of its top `saliency.image_top_fraction`
               pixel scores inside the lungs (the data's lung mask, else the `saliency.lung_segmenter` run's,
               else the whole image); `image_auc_ci_low/high` its 95 % interval from a patient bootstrap
  pixel_auroc, pixel_ap   every pixel of the images with lesion masks (normal images: all negative)
  best_dice    the best Dice over one global threshold of the pixel scores (= the best F1 of the pixels)
  pointing_accuracy  fraction of lesion images whose highest score inside the lungs lies within the lesion
               (its radius + `saliency.pointing_margin` × image size; jsrt: + 10 px at 512), beside
               `pointing_chance`, the same for a uniformly random lung pixel
  hit_rate     fraction of lesions (box centres: `nodule_x`/`nodule_y` for jsrt) inside the box of a
               component of the saliency pipeline (`methods.dgm.saliency`), over the images that have one;
               `hit_rate_chance` is the fraction of lung pixels those boxes cover (a random guess's hit rate)
The same keys prefixed `ae_` score the baseline autoencoder's error z − AE(z) (`model.ae`), and
`eval/cases.png`: input | synthesised normal | residue (or z − y′, by `saliency.source`) | saliency for the best
and worst abnormal cases, with column titles, a colour bar and a legend of the boxes (lesion ground truth,
predicted components, lungs).
`anomaly_metrics` takes any anomaly maps, so a baseline's reconstruction error is scored the same way.
"""

from __future__ import annotations

import pathlib

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics as skm

from cxr_jax import runs, stats
from cxr_jax.data import sources
from cxr_jax.methods.dgm import pictures, saliency
from cxr_jax.methods.segment import segmenter as segment

MAP_TITLES = {"residue": "residue r", "difference": "difference z − y′"}  # By `saliency.source`.


def evaluate(method, state, mesh, outdir: pathlib.Path) -> dict[str, float]:
    """Scores the eval split's residues; writes `cases.png` to `outdir`."""
    config = method.config
    spec = config.data.eval
    data = sources.load(spec, image_size=config.image_size, seed=config.seed)
    keep = np.flatnonzero(data["label"] >= 0)
    key = "image" if "image" in data else "file"
    outputs, rows = runs.predict(method, state, {key: data[key][keep]}, mesh, fn=method.anomaly_maps,
                                 on_error=spec.on_error)
    picked = {k: v[keep][rows] for k, v in data.items() if k in ("image", "label", "mask_lesion", "mask_lungs", "box")}
    if "mask_lungs" not in picked and config.saliency.lung_segmenter:
        images = (picked["image"] if "image" in picked else  # Streamed: read the files again.
                  np.stack([sources.read_gray(f, config.image_size)[0] for f in data["file"][keep][rows]]))
        picked["mask_lungs"] = segment.Segmenter(config.saliency.lung_segmenter).lungs(images)
    groups = data["patient"][keep][rows] if "patient" in data else np.arange(len(rows))
    maps = pictures.anomaly_map(config, outputs)[..., 0]
    result, scored = anomaly_metrics(maps, picked, config.saliency)
    result.update(_auc_interval(picked["label"], scored["image_scores"], groups, config.bootstrap))
    if "ae_residue" in outputs:  # The baseline's reconstruction error, scored the same way.
        ae_map = pictures.anomaly_map(config, outputs, ae=True)[..., 0]
        ae_result, ae_scored = anomaly_metrics(ae_map, picked, config.saliency)
        ae_result.update(_auc_interval(picked["label"], ae_scored["image_scores"], groups, config.bootstrap))
        result.update({f"ae_{k}": v for k, v in ae_result.items() if not k.startswith("num_")})
    if "image" in picked:
        _plot_cases(picked, outputs["normal"][..., 0], maps, MAP_TITLES[config.saliency.source], scored,
                    outdir / "cases.png")
    return result


def anomaly_metrics(maps: np.ndarray, data: dict[str, np.ndarray], cfg) -> tuple[dict[str, float], dict]:
    """Image, pixel and lesion-hit metrics of anomaly maps [N, H, W] against `data`'s labels and annotations.

    `data` holds `label` [N] and, where the set has them, `mask_lesion` [N, H, W], `mask_lungs` [N, H, W] and
    lesion boxes `box` [N, 4] (NaN where absent). Returns the metrics and, per image, its score and saliency.
    """
    scores = np.stack([saliency.score_map(m, cfg.polarity, cfg.smooth_sigma) for m in maps])
    lungs = data.get("mask_lungs")
    regions = lungs > 0 if lungs is not None else np.ones(scores.shape, bool)
    regions = np.where(regions.any(axis=(1, 2), keepdims=True), regions, True)  # An empty mask: the whole image.
    image_scores = np.array([_top_mean(s[r], cfg.image_top_fraction)
                             for s, r in zip(scores, regions)])
    labels = data["label"]
    result = {"image_auc": _auc(labels, image_scores), "num_images": float(len(labels)),
              "num_abnormal": float(np.sum(labels == 1))}
    if "mask_lesion" in data and data["mask_lesion"].any():
        truth = data["mask_lesion"].ravel() > 0
        result["pixel_auroc"] = float(skm.roc_auc_score(truth, scores.ravel()))
        result["pixel_ap"] = float(skm.average_precision_score(truth, scores.ravel()))
        precision, recall, _ = skm.precision_recall_curve(truth, scores.ravel())
        result["best_dice"] = float(np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12)))
    boxes = [saliency.lung_boxes(lung) for lung in lungs] if lungs is not None else [[]] * len(maps)
    found = [saliency.saliency(m, b, method=cfg.threshold, percentile=cfg.percentile, polarity=cfg.polarity,
                               min_area=cfg.min_area, sigma=cfg.smooth_sigma) for m, b in zip(maps, boxes)]
    if "box" in data:
        result.update(pointing(scores, regions, data["box"], margin=cfg.pointing_margin * scores.shape[-1]))
        hits = [any(c.contains((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for c in f["components"])
                for b, f in zip(data["box"], found) if np.isfinite(b).all()]
        if hits:
            result["hit_rate"] = float(np.mean(hits))
            result["num_lesions"] = float(len(hits))
            # A random point in the lungs lands in a component box this often: the hit rate of guessing.
            covered = [saliency.box_mask([c.box for c in f["components"]], r.shape)[r].mean()
                       for b, f, r in zip(data["box"], found, regions) if np.isfinite(b).all()]
            result["hit_rate_chance"] = float(np.mean(covered))
    result["components_per_image"] = float(np.mean([len(f["components"]) for f in found]))
    return result, {"image_scores": image_scores, "saliency": found}


def pointing(scores: np.ndarray, regions: np.ndarray, boxes: np.ndarray, *, margin: float) -> dict[str, float]:
    """Whether each lesion image's highest score in the lungs lands on its lesion, beside a random lung pixel.

    A lesion is the disc at its box's centre with radius half the box's longer side + `margin` pixels (jsrt's
    boxes are its nodules' diameters). `pointing_accuracy`: the fraction of images with a lesion box whose
    arg-max inside `regions` lies in the disc; `pointing_chance`: the mean fraction of the region's pixels in
    the disc, the accuracy of pointing at a uniformly random lung pixel. Empty dict without lesion boxes.
    """
    hits, chance = [], []
    ys, xs = np.mgrid[:scores.shape[1], :scores.shape[2]] + 0.5  # Pixel centres, in the boxes' edge coordinates.
    for score, region, box in zip(scores, regions, boxes):
        if not np.isfinite(box).all():
            continue
        radius = max(box[2] - box[0], box[3] - box[1]) / 2 + margin
        disc = (xs - (box[0] + box[2]) / 2) ** 2 + (ys - (box[1] + box[3]) / 2) ** 2 <= radius**2
        inside = np.where(region, score, -np.inf)
        hits.append(disc.flat[np.argmax(inside)])
        chance.append(disc[region].mean())
    if not hits:
        return {}
    return {"pointing_accuracy": float(np.mean(hits)), "pointing_chance": float(np.mean(chance))}


def _auc_interval(labels, image_scores, groups, cfg) -> dict[str, float]:
    """`image_auc_ci_low/high`: the patient-bootstrap interval of `image_auc` (NaN with one class)."""
    low, high = stats.auc_interval(labels=labels, scores=image_scores, groups=groups, cfg=cfg)
    return {"image_auc_ci_low": low, "image_auc_ci_high": high}


def _top_mean(values: np.ndarray, fraction: float) -> float:
    k = max(1, int(round(fraction * values.size)))
    return float(np.mean(np.partition(values, values.size - k)[-k:]))


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(skm.roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan")


def _plot_cases(data: dict, normals: np.ndarray, maps: np.ndarray, map_title: str, scored: dict,
                path: pathlib.Path, per_side: int = 4) -> None:
    """Rows: the abnormal images the score ranks highest (best) and lowest (worst).

    Columns: the input, the synthesised normal, the map saliency is computed from (`maps` [N, H, W], titled
    `map_title`; one colour scale in gray levels, its bar under the column) and the kept components over the
    input; the lesion's ground-truth box, the components' and the lungs' boxes are drawn on the last two and
    named in the legend. Each panel is at least `pictures.MIN_SIDE` pixels wide.
    """
    abnormal = np.flatnonzero(data["label"] == 1)
    if not len(abnormal):
        return
    order = abnormal[np.argsort(-scored["image_scores"][abnormal], kind="stable")]
    picks = ([("best", rank, i) for rank, i in enumerate(order[:per_side], 1)]
             + [("worst", rank, i) for rank, i in enumerate(order[::-1][:per_side], 1)])
    shown = maps[[i for _, _, i in picks]] * pictures.GRAY_LEVELS
    limit = float(max(1.0, np.ceil(np.percentile(np.abs(shown), 99.5))))
    # The layout in inches at 100 dpi: panels of `size` (≥ MIN_SIDE px) with `gap`s, the row labels on the left,
    # the title, legend and column titles on top, the colour bar under the map column.
    size, gap, left, top, bottom = pictures.MIN_SIDE / 100 + 0.24, 0.1, 0.8, 1.1, 0.95
    width, height = left + 4 * size + 3 * gap + 0.15, top + len(picks) * (size + gap) - gap + bottom
    fig = Figure(figsize=(width, height), dpi=100)
    axes = [[fig.add_axes(((left + c * (size + gap)) / width, 1 - (top + (r + 1) * size + r * gap) / height,
                           size / width, size / height)) for c in range(4)] for r in range(len(picks))]
    lungs_shown = truth_shown = False
    for row, (kind, rank, i) in zip(axes, picks):
        found = scored["saliency"][i]
        lungs = saliency.lung_boxes(data["mask_lungs"][i]) if "mask_lungs" in data else []
        truth = [data["box"][i]] if "box" in data and np.isfinite(data["box"][i]).all() else []
        lungs_shown, truth_shown = lungs_shown or bool(lungs), truth_shown or bool(truth)
        image = data["image"][i, ..., 0]
        row[0].imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        row[1].imshow(normals[i], cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        bar_source = row[2].imshow(maps[i] * pictures.GRAY_LEVELS, cmap="seismic", vmin=-limit, vmax=limit,
                                   interpolation="nearest")
        row[3].imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        row[3].imshow(pictures.tint(found["binary"]), interpolation="nearest")
        pictures.draw_boxes(row[3], lungs, pictures.LUNG_COLOUR, 1.2)
        pictures.draw_boxes(row[3], [c.box for c in found["components"]], pictures.COMPONENT_COLOUR, 1.2)
        for ax in row[2:]:
            pictures.draw_boxes(ax, truth, pictures.TRUTH_COLOUR, 1.5)
        row[0].set_ylabel(f"{kind} {rank}\nscore {scored['image_scores'][i]:.3f}", fontsize=10)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
    titles = ("input z", "synthesised normal y′", map_title, "saliency over z")
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=11)
    fig.suptitle("Abnormal eval images with the highest (best) and lowest (worst) image scores", fontsize=12,
                 y=1 - 0.1 / height, va="top")
    fig.legend(handles=pictures.legend_handles(lungs=lungs_shown, truth=truth_shown), loc="upper center",
               bbox_to_anchor=(0.5, 1 - 0.4 / height), ncols=4, fontsize=10)
    bar = fig.add_axes(((left + 2 * (size + gap)) / width, 0.6 / height, size / width, 0.15 / height))
    fig.colorbar(bar_source, cax=bar, orientation="horizontal",
                 label=f"{map_title}, gray levels\n(red: added, blue: removed)")
    fig.savefig(path)
