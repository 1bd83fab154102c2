"""Text→image retrieval with a trained ConVIRT run: images scored by cosine similarity to a query report."""

from __future__ import annotations

import numpy as np

from cxr_jax import runs
from cxr_jax.methods.convirt import evaluate


def scores(method, state, mesh, pixels: np.ndarray, query: str) -> np.ndarray:
    """Cosine similarity [N] of each uint8 image [N, S, S, 1] (S: the run's image size) to `query`."""
    image_emb, _ = runs.predict(method, state, {"image": pixels}, mesh, fn=method.embed_images)
    text_emb = evaluate.embed_texts(method, state, mesh, [query])
    return _unit(image_emb) @ _unit(text_emb)[0]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
