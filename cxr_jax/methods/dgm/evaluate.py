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
`eval/cases.png`: input | synthesised normal | residue | saliency for the best and worst abnormal cases.
`anomaly_metrics` takes any anomaly maps, so a baseline's reconstruction error is scored the same way.
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from cxr_jax import runs, stats  # noqa: E402
from cxr_jax.data import sources  # noqa: E402
from cxr_jax.methods.dgm import pictures, saliency  # noqa: E402
from cxr_jax.methods.segment import segmenter as segment  # noqa: E402


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
    result, scored = anomaly_metrics(pictures.anomaly_map(config, outputs)[..., 0], picked, config.saliency)
    result.update(_auc_interval(picked["label"], scored["image_scores"], groups, config.bootstrap))
    if "ae_residue" in outputs:  # The baseline's reconstruction error, scored the same way.
        ae_map = pictures.anomaly_map(config, outputs, ae=True)[..., 0]
        ae_result, ae_scored = anomaly_metrics(ae_map, picked, config.saliency)
        ae_result.update(_auc_interval(picked["label"], ae_scored["image_scores"], groups, config.bootstrap))
        result.update({f"ae_{k}": v for k, v in ae_result.items() if not k.startswith("num_")})
    if "image" in picked:
        _plot_cases(picked, outputs, scored, outdir / "cases.png")
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


def _plot_cases(data: dict, outputs: dict, scored: dict, path: pathlib.Path, per_side: int = 4) -> None:
    """Rows: the abnormal images the score ranks highest (best) and lowest (worst)."""
    abnormal = np.flatnonzero(data["label"] == 1)
    if not len(abnormal):
        return
    order = abnormal[np.argsort(-scored["image_scores"][abnormal], kind="stable")]
    picks = [("best", i) for i in order[:per_side]] + [("worst", i) for i in order[::-1][:per_side]]
    fig, axes = plt.subplots(len(picks), 4, figsize=(8, 2.1 * len(picks)), squeeze=False)
    for row, (kind, i) in zip(axes, picks):
        found = scored["saliency"][i]
        panels = [(data["image"][i, ..., 0] / 127.5 - 1, "gray", (-1, 1), f"{kind}: input"),
                  (outputs["normal"][i, ..., 0], "gray", (-1, 1), "normal y′"),
                  (outputs["residue"][i, ..., 0], "seismic", (-1, 1), "residue r"),
                  (found["binary"].astype(float), "hot", (0, 1), f"saliency ({scored['image_scores'][i]:.3f})")]
        for ax, (image, cmap, (lo, hi), title) in zip(row, panels):
            ax.imshow(image, cmap=cmap, vmin=lo, vmax=hi)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        if "box" in data and np.isfinite(data["box"][i]).all():
            x0, y0, x1, y1 = data["box"][i]
            row[3].add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
