"""Pictures of LD's pixel embeddings and clusters, drawn every `eval.every` steps during training.

Per image of `data.eval`'s first few: the input, the embedding's first three principal components as RGB and
each pixel's cluster (the argmax of the assignment) in a fixed palette. The components are computed over the
pixels of all pictured images together, so a colour means the same embedding in every row: matching anatomy
should match in colour across images. Imported lazily by `LD.samples` (training needs no matplotlib).
"""

from __future__ import annotations

import matplotlib
import numpy as np

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
    return image_grid([[image[..., 0], e, c] for image, e, c in zip(images, rgb, clusters)])
