"""Pictures of LD's pixel embeddings and clusters, drawn every `eval.every` steps during training.

Per image of `data.eval`'s first few: the input, the embedding's first three principal components as RGB and
each pixel's cluster (the argmax of the assignment) in a fixed palette. The components are computed over the
pixels of all pictured images together, so a colour means the same embedding in every row: matching anatomy
should match in colour across images. Imported lazily by `LD.samples` (training needs no matplotlib).

`landmark_figure`: one-shot landmarks on queries (`evaluate`'s landmarks.png).
"""

from __future__ import annotations

import pathlib

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cxr_jax import runs
from cxr_jax.metrics import image_grid


def embedding_rgb(embedding: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S, 3]: the first three principal components of embeddings [N, S, S, D], each stretched.

    Each component maps its 1st to 99th percentile over all pixels onto 0 to 255 (missing ones, D < 3, are 0).
    """
    x = embedding.reshape(-1, embedding.shape[-1]).astype(np.float64)
    x -= x.mean(axis=0)
    _, vectors = np.linalg.eigh(x.T @ x)  # Ascending eigenvalues: the last columns are the leading components.
    components = x @ vectors[:, ::-1][:, :3]
    low, high = np.percentile(components, [1, 99], axis=0)
    scaled = np.clip((components - low) / np.maximum(high - low, 1e-12), 0, 1)
    scaled = np.pad(scaled, ((0, 0), (0, 3 - scaled.shape[1])))
    return (scaled * 255).round().astype(np.uint8).reshape(*embedding.shape[:-1], 3)


def cluster_map(assignment: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S, 3]: each pixel's most likely cluster of assignments [N, S, S, K] in the tab20 palette."""
    palette = (matplotlib.colormaps["tab20"](np.arange(assignment.shape[-1]) % 20)[:, :3] * 255).astype(np.uint8)
    return palette[np.argmax(assignment, axis=-1)]


def samples(method, state, mesh) -> np.ndarray:
    """Rows input | embedding PCA | clusters for `method.sample_examples` (data.eval's first images)."""
    images = method.sample_examples["image"]
    outputs, _ = runs.predict(method, state, {"image": images}, mesh)
    rgb, clusters = embedding_rgb(outputs["embedding"]), cluster_map(outputs["assignment"])
    return image_grid([[image[..., 0], e, c] for image, e, c in zip(images, rgb, clusters)],
                      titles=("input", "embedding (3 principal components)", "clusters"))


def landmark_figure(images: np.ndarray, points: dict[str, np.ndarray], path: pathlib.Path, *,
                    titles: list[str], panel_px: int = 320) -> None:
    """Queries side by side, each `panel_px` wide, with 'truth', the prediction and the other point sets.

    `images` uint8 [N, S, S, 1]; `points` maps a legend name to (x, y) [N, L, 2] in the images' pixels: the
    first entry is the ground truth (green dots), the second the prediction (red dots, joined to the truth
    by its error lines), the rest drawn as small crosses (e.g. the template's copied points).
    """
    names = list(points)
    dpi, n = 100, len(images)
    fig = Figure(figsize=(n * panel_px / dpi, (panel_px + 40) / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    styles = [dict(c="#33dd33", marker="o", s=6), dict(c="#ff3333", marker="o", s=6),
              dict(c="#3399ff", marker="x", s=8, linewidths=0.8), dict(c="#ffdd33", marker="+", s=8)]
    for i, (image, title) in enumerate(zip(images, titles)):
        ax = fig.add_axes((i / n, 0, 1 / n, panel_px / (panel_px + 40)))
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
        truth, predicted = points[names[0]][i], points[names[1]][i]
        for (x0, y0), (x1, y1) in zip(truth, predicted):
            ax.plot([x0, x1], [y0, y1], color="#ff3333", linewidth=0.6, alpha=0.8)
        for name, style in zip(names, styles):
            ax.scatter(*points[name][i].T, label=name, **style)
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
        if i == 0:
            ax.legend(loc="lower left", fontsize=7, framealpha=0.75, markerscale=1.5)
    fig.savefig(path)
