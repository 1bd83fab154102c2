"""A trained segment run as a predictor: masks for any images, and lung masks for DGM's saliency.

`Segmenter.lungs` gives DGM's decompose and evaluation their lung boxes when a set has no lung masks; the
`cxr-jax segment` command (`cli/segment.py`) writes masks and overlays for image files.
"""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

from cxr_jax import parallel, runs
from cxr_jax.config import ConfigError

OUTLINE_COLOURS = ((255, 64, 64), (64, 255, 64), (64, 128, 255), (255, 255, 64), (255, 64, 255))
COLOUR_NAMES = ("red", "green", "blue", "yellow", "magenta")


def legend(structures) -> str:
    """Which outline colour is which structure, e.g. 'outlines: left_lung red, right_lung green'."""
    return "outlines: " + ", ".join(f"{s} {COLOUR_NAMES[c % len(COLOUR_NAMES)]}" for c, s in enumerate(structures))


class Segmenter:
    """A trained `segment` run at checkpoint `which` (latest, best or a step), ready to predict: `masks(images)`."""

    def __init__(self, workdir: str | pathlib.Path, mesh=None, *, which: str | int = "latest"):
        self.mesh = mesh or parallel.make_mesh()
        self.config, self.method, self.state, self.step = runs.restore_run(
            workdir, "segment", needed="a segmenter run (configs/segment.py)", mesh=self.mesh, which=which)
        self.structures = tuple(self.config.model.structures)

    def masks(self, images: np.ndarray) -> np.ndarray:
        """Binary masks uint8 [N, S, S, C] of square uint8 images [N, S, S(, 1)], at their own size S."""
        images = images[..., 0] if images.ndim == 4 else images
        size, own = images.shape[1], self.config.image_size
        resized = np.stack([_resize(x, own, Image.BILINEAR) for x in images])[..., None]
        probs, _ = runs.predict(self.method, self.state, {"image": resized}, self.mesh)
        hard = (probs > 0.5).astype(np.uint8)
        return np.stack([np.stack([_resize(m[..., c], size, Image.NEAREST) for c in range(m.shape[-1])], -1)
                         for m in hard])

    def lungs(self, images: np.ndarray) -> np.ndarray:
        """Lung masks uint8 [N, S, S]: the `lungs` channel, or left_lung | right_lung."""
        masks = self.masks(images)
        if "lungs" in self.structures:
            return masks[..., self.structures.index("lungs")]
        if {"left_lung", "right_lung"} <= set(self.structures):
            return masks[..., self.structures.index("left_lung")] | masks[..., self.structures.index("right_lung")]
        raise ConfigError(f"the segmenter's structures {self.structures} include no lungs")


def to_original(mask: np.ndarray, orig_size: tuple[int, int]) -> np.ndarray:
    """A square model-resolution mask back on the original (h, w) grid: resize to the padded side, crop."""
    h, w = orig_size
    side = max(h, w)
    square = _resize(mask, side, Image.NEAREST)
    top, left = (side - h) // 2, (side - w) // 2
    return square[top:top + h, left:left + w]


def overlay(image: np.ndarray, masks: np.ndarray) -> Image.Image:
    """Each mask's outline (pixels inside with a neighbour outside) in its own colour over a gray image."""
    rgb = np.repeat(image[..., None], 3, axis=-1)
    for c in range(masks.shape[-1]):
        m = masks[..., c] > 0
        inner = m.copy()
        inner[1:] &= m[:-1]
        inner[:-1] &= m[1:]
        inner[:, 1:] &= m[:, :-1]
        inner[:, :-1] &= m[:, 1:]
        rgb[m & ~inner] = OUTLINE_COLOURS[c % len(OUTLINE_COLOURS)]
    return Image.fromarray(rgb)


def _resize(x: np.ndarray, size: int, resample) -> np.ndarray:
    return x if x.shape[0] == size else np.asarray(Image.fromarray(x).resize((size, size), resample))
