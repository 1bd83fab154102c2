"""Saliency from a DGM residue map: adaptive threshold, connected components inside the lung boxes.

As in Tang et al. (2021), the residue r = D_F(E_F(z)) is what the model had to add to the synthesised normal
image to get the input back, so its magnitude marks disease. The pipeline, on host NumPy arrays:
  1. a score map from r (`polarity`: |r|, or only added or removed intensity; optionally Gaussian-smoothed);
  2. an adaptive threshold on the scores inside the lung boxes: Otsu's (maximum between-class variance) or a
     percentile, so each image gets its own cut-off;
  3. connected components (8-connected) of the pixels above it inside the lung boxes, smaller ones than
     `min_area` dropped; each has a box (x0, y0, x1, y1 in pixel-edge coordinates, like the data's boxes), its
     area, and its score (the maximum, and the mean, of the score map inside it).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

POLARITIES = ("abs", "positive", "negative")
SOURCES = ("residue", "difference")  # r, or z − y′ (the input minus the synthesised normal).
THRESHOLDS = ("otsu", "percentile")


@dataclasses.dataclass(frozen=True)
class Component:
    """One salient region."""

    box: tuple[float, float, float, float]  # (x0, y0, x1, y1), pixel edges.
    area: int  # Pixels.
    score: float  # Maximum of the score map inside.
    mean_score: float
    centroid: tuple[float, float]  # (x, y) of pixel centres.

    def contains(self, x: float, y: float) -> bool:
        """Whether the point (x, y), in the same pixel coordinates, is inside the component's box."""
        x0, y0, x1, y1 = self.box
        return x0 <= x <= x1 and y0 <= y <= y1

    def to_json(self) -> dict:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


def score_map(residue: np.ndarray, polarity: str = "abs", sigma: float = 0.0) -> np.ndarray:
    """[H, W] scores ≥ 0 from a residue map: |r|, max(r, 0) (added intensity) or max(−r, 0).

    `sigma` > 0 first smooths the residue with a Gaussian of that many pixels, so that isolated pixels of
    reconstruction noise count less than a lesion's coherent blob.
    """
    r = np.asarray(residue, np.float64).squeeze()
    if sigma > 0:
        r = ndimage.gaussian_filter(r, sigma, mode="nearest")
    if polarity == "abs":
        return np.abs(r)
    if polarity == "positive":
        return np.maximum(r, 0.0)
    if polarity == "negative":
        return np.maximum(-r, 0.0)
    raise ValueError(f"saliency polarity must be one of {POLARITIES}; got {polarity!r}")


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the histogram cut maximising the between-class variance ω₀ω₁(μ₀ − μ₁)².

    Returns the upper edge of the last bin of the lower class; all values equal → that value.
    """
    values = np.asarray(values, np.float64).ravel()
    low, high = values.min(), values.max()
    if high <= low:
        return float(high)
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1]
    w1 = counts.sum() - w0
    s0 = np.cumsum(counts * centres)[:-1]
    m0 = s0 / np.maximum(w0, 1)
    m1 = (np.sum(counts * centres) - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[1:-1][np.argmax(between)])


def box_mask(boxes, shape: tuple[int, int]) -> np.ndarray:
    """[H, W] bool: the pixels whose centres lie inside any of the (x0, y0, x1, y1) boxes."""
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        cols = slice(max(int(np.ceil(x0 - 0.5)), 0), max(int(np.ceil(x1 - 0.5)), 0))
        rows = slice(max(int(np.ceil(y0 - 0.5)), 0), max(int(np.ceil(y1 - 0.5)), 0))
        mask[rows, cols] = True
    return mask


def lung_boxes(mask: np.ndarray, max_regions: int = 2, min_fraction: float = 0.01) -> list[tuple]:
    """Boxes of the (at most two) largest connected regions of a lung mask, each ≥ `min_fraction` of the image."""
    labels, num = ndimage.label(np.asarray(mask).squeeze() > 0)
    if num == 0:
        return []
    areas = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, num + 1))
    keep = [i + 1 for i in np.argsort(-areas)[:max_regions] if areas[i] >= min_fraction * labels.size]
    boxes = []
    objects = ndimage.find_objects(labels)
    for index in keep:
        rows, cols = objects[index - 1]
        boxes.append((float(cols.start), float(rows.start), float(cols.stop), float(rows.stop)))
    return sorted(boxes)


def threshold(scores: np.ndarray, region: np.ndarray, *, method: str = "otsu", percentile: float = 95.0) -> float:
    """The adaptive cut-off of `scores` computed over the pixels of `region` (the whole map if it is empty)."""
    values = scores[region] if region.any() else scores.ravel()
    if method == "otsu":
        return otsu_threshold(values)
    if method == "percentile":
        return float(np.percentile(values, percentile))
    raise ValueError(f"saliency threshold must be one of {THRESHOLDS}; got {method!r}")


def components(binary: np.ndarray, scores: np.ndarray, *, min_area: int = 1) -> tuple[np.ndarray, list[Component]]:
    """The 8-connected components of `binary` with ≥ `min_area` pixels.

    Returns the [H, W] mask of the kept components and the components, highest score first.
    """
    labels, num = ndimage.label(binary, structure=np.ones((3, 3)))
    kept, found = np.zeros(binary.shape, bool), []
    for index, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
        pixels = labels[rows, cols] == index
        area = int(pixels.sum())
        if area < min_area:
            continue
        kept[rows, cols] |= pixels
        inside = scores[rows, cols][pixels]
        ys, xs = np.nonzero(pixels)
        found.append(Component(box=(float(cols.start), float(rows.start), float(cols.stop), float(rows.stop)),
                               area=area, score=float(inside.max()), mean_score=float(inside.mean()),
                               centroid=(float(xs.mean() + cols.start + 0.5), float(ys.mean() + rows.start + 0.5))))
    return kept, sorted(found, key=lambda c: -c.score)


def saliency(residue: np.ndarray, boxes, *, method: str = "otsu", percentile: float = 95.0,
             polarity: str = "abs", min_area: int = 1, sigma: float = 0.0) -> dict:
    """The whole pipeline for one residue map [H, W] (or [H, W, 1]) and its lung boxes.

    Returns {'scores': [H, W], 'threshold': float, 'binary': [H, W] bool (kept components only),
    'components': [Component]}. With no boxes the whole image counts as lung.
    """
    scores = score_map(residue, polarity, sigma)
    region = box_mask(boxes, scores.shape) if len(boxes) else np.ones(scores.shape, bool)
    cut = threshold(scores, region, method=method, percentile=percentile)
    binary, found = components((scores > cut) & region, scores, min_area=min_area)
    return {"scores": scores, "threshold": cut, "binary": binary, "components": found}
