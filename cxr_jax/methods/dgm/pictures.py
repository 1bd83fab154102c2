"""Pictures of a DGM decomposition, drawn the same way by `cxr-jax decompose` and during training.

Per image: the synthesised normal y′ (gray), the residue r (signed, seismic colour map: blue removed
intensity, red added), the saliency scores as a heat-map over the input, and the kept components (red) with
their boxes (yellow) and the lung boxes (green) over the input. `cli/decompose.py` writes them as PNGs per
image; `samples` tiles them for a few eval images into the picture the training loop writes every
`eval.every` steps. Imported lazily (by the command and by `DGM.samples`): training needs no matplotlib.
"""

from __future__ import annotations

import matplotlib
import numpy as np
from PIL import Image, ImageDraw

from cxr_jax import runs
from cxr_jax.config import ConfigError
from cxr_jax.methods.dgm import saliency
from cxr_jax.metrics import image_grid


def gray(x: np.ndarray) -> np.ndarray:
    """uint8 [H, W] of a model-range image [H, W, 1] in [-1, 1] (y′, or the input as the model sees it)."""
    return ((np.clip(x[..., 0], -1, 1) + 1) * 127.5).round().astype(np.uint8)


def residue_rgb(residue: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3]: the signed residue [H, W, 1] through the seismic map (white: 0)."""
    signed = matplotlib.colormaps["seismic"]((np.clip(residue[..., 0], -1, 1) + 1) / 2)[..., :3]
    return (signed * 255).astype(np.uint8)


def heatmap(image: np.ndarray, found: dict) -> np.ndarray:
    """uint8 [H, W, 3]: the saliency scores (normalised to their maximum, jet) blended over uint8 `image` [H, W]."""
    scores = found["scores"] / max(found["scores"].max(), 1e-12)
    heat = matplotlib.colormaps["jet"](scores)[..., :3] * 255
    return (0.55 * _rgb(image) + 0.45 * heat).astype(np.uint8)


def saliency_overlay(image: np.ndarray, found: dict, boxes) -> np.ndarray:
    """uint8 [H, W, 3]: the kept components in red with their boxes (yellow) and the lung boxes (green)."""
    overlay = _rgb(image)
    overlay[found["binary"]] = 0.4 * overlay[found["binary"]] + 0.6 * np.array([255, 0, 0])
    picture = Image.fromarray(overlay.astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for box in boxes:
        draw.rectangle(_pil_box(box), outline=(0, 200, 0))
    for component in found["components"]:
        draw.rectangle(_pil_box(component.box), outline=(255, 220, 0))
    return np.asarray(picture)


def find(config, residue: np.ndarray, boxes) -> dict:
    """`saliency.saliency` of one residue [H, W, 1] inside `boxes` with the config's `saliency.*` settings."""
    c = config.saliency
    return saliency.saliency(residue, boxes, method=c.threshold, percentile=c.percentile, polarity=c.polarity,
                             min_area=c.min_area, sigma=c.smooth_sigma)


def anomaly_map(config, outputs: dict, ae: bool = False) -> np.ndarray:
    """The map saliency is computed from: `saliency.source` ('residue': r, 'difference': z − y′) of `outputs`.

    With `ae`, the baseline's error z − AE(z) (`outputs['ae_residue']`) instead.
    """
    if ae:
        return outputs["ae_residue"]
    source = config.saliency.source
    if source not in saliency.SOURCES:
        raise ConfigError(f"saliency.source={source!r}; expected one of {saliency.SOURCES}")
    return outputs[source]


def samples(method, state, mesh) -> np.ndarray:
    """Rows input | synthesised normal | residue | saliency for `method.sample_examples` (data.eval's first).

    Lung boxes come from the set's lung masks where it has them, else the whole image counts as lung (no
    segmenter run is consulted, to keep the picture cheap).
    """
    data = method.sample_examples
    # `anomaly_maps` (decompose and the baseline's error): the function evaluation compiled already.
    outputs, _ = runs.predict(method, state, {"image": data["image"]}, mesh, fn=method.anomaly_maps)
    rows = []
    for i, image in enumerate(data["image"][..., 0]):
        boxes = saliency.lung_boxes(data["mask_lungs"][i]) if "mask_lungs" in data else []
        found = find(method.config, anomaly_map(method.config, outputs)[i], boxes)
        rows.append([image, gray(outputs["normal"][i]), residue_rgb(outputs["residue"][i]),
                     saliency_overlay(image, found, boxes)])
    return image_grid(rows)


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None].astype(np.float64), 3, axis=-1)


def _pil_box(box) -> tuple[float, float, float, float]:
    """Edge coordinates (x1, y1 exclusive) to PIL's inclusive corner pixels."""
    x0, y0, x1, y1 = box
    return x0, y0, x1 - 1, y1 - 1
