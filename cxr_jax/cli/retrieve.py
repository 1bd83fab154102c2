"""`cxr-jax retrieve`: rank images against a text query with a trained ConVIRT run.

`cxr-jax retrieve --workdir RUN --query "TEXT" --images DIR… --top-k K --out OUT` writes OUT/matches.json
(rank, file, score) and OUT/matches.png (the top K with their scores).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cxr_jax import parallel, runs  # noqa: E402
from cxr_jax.data.sources import fileio  # noqa: E402
from cxr_jax.methods.convirt import retrieve  # noqa: E402


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, query: str,
        images: Sequence[str | pathlib.Path], top_k: int, out: str | pathlib.Path,
        which: str | int = "latest") -> dict:
    """Ranks `images` against `query` with checkpoint `which`; writes and returns the top `top_k` matches."""
    mesh = parallel.make_mesh()
    _, method, state, step = runs.restore_run(workdir, "convirt", needed="a ConVIRT run (configs/convirt.py)",
                                              mesh=mesh, config=config, which=which)
    files, pixels, _ = fileio.read_images(images, config.image_size)
    scores = retrieve.scores(method, state, mesh, pixels, query)
    order = np.argsort(-scores, kind="stable")[:top_k]
    result = {"query": query, "workdir": str(workdir), "step": step, "num_images": len(files),
              "matches": [{"rank": r + 1, "file": str(files[i]), "score": float(scores[i])}
                          for r, i in enumerate(order)]}
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "matches.json").write_text(json.dumps(result, indent=2) + "\n")
    _grid(pixels[order, ..., 0], result["matches"], query, out / "matches.png")
    return result


def _grid(pixels: np.ndarray, matches: list[dict], query: str, path: pathlib.Path) -> None:
    cols = min(len(matches), 5)
    rows = -(-len(matches) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, match in zip(axes.flat, pixels, matches):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"#{match['rank']} {match['score']:.3f}\n{pathlib.Path(match['file']).name[:28]}", fontsize=8)
    fig.suptitle(query if len(query) <= 90 else query[:87] + "…", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
