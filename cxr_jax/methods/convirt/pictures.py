"""ConVIRT's evaluation figures: the image embeddings' PCA and a text→image retrieval grid."""

from __future__ import annotations

import pathlib
import textwrap

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_embeddings(embeddings: np.ndarray, labels: np.ndarray, path: pathlib.Path) -> None:
    """The image embeddings' first two principal components, coloured by normal / abnormal / unknown."""
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    centred = unit - unit.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    fig, ax = plt.subplots(figsize=(5, 5))
    for value, name, colour in ((0, "normal", "tab:blue"), (1, "abnormal", "tab:red"), (-1, "unknown", "0.6")):
        keep = labels == value
        if keep.any():
            ax.scatter(xy[keep, 0], xy[keep, 1], s=8, c=colour, label=name, alpha=0.7)
    ax.set(xlabel="PC 1", ylabel="PC 2", title="image embeddings (PCA)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def retrieval_grid(images: np.ndarray, reports: list[str], scores: np.ndarray, same: np.ndarray,
                   path: pathlib.Path, *, queries: np.ndarray, top_k: int = 5) -> None:
    """For each query report (row), its `top_k` nearest images; a green frame marks an image of that report.

    Args:
      images: [N, H, W, 1] uint8 images of the eval pairs.
      reports: the N reports, as they were embedded whole (`_whole`).
      scores: [N images, N reports] cosine similarities.
      same: [N, N] True where two pairs have the same report (either counts as the match).
      path: the PNG to write.
      queries: the report rows to show.
      top_k: images per query.
    """
    fig, axes = plt.subplots(len(queries), top_k + 1, figsize=(2.7 * (top_k + 1), 2.9 * len(queries)),
                             squeeze=False, gridspec_kw={"width_ratios": [1.3] + [1] * top_k})
    for row, query in zip(axes, queries):
        row[0].axis("off")
        row[0].text(0, 0.5, textwrap.fill(reports[query], 28), fontsize=8, va="center", wrap=True)
        row[0].set_title("query report", fontsize=9)
        order = np.argsort(-scores[:, query], kind="stable")[:top_k]
        for rank, (ax, i) in enumerate(zip(row[1:], order), start=1):
            ax.imshow(images[i, ..., 0], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            hit = bool(same[query, i])
            for spine in ax.spines.values():
                spine.set(color="tab:green" if hit else "0.7", linewidth=4 if hit else 1)
            ax.set_title(f"#{rank}  cos {scores[i, query]:.2f}" + ("  (its image)" if hit else ""), fontsize=8)
    fig.suptitle("text → image retrieval on held-out pairs (green frame: an image of the query's report)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
