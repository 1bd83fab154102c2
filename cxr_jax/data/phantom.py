"""A deterministic chest-X-ray phantom: embedded data that needs no download.

Each image is drawn from its own seed (`seed`, index), so any subset is reproducible on its own. The
anatomy is a simple frontal chest: body outline, two lung fields, heart, spine and ribs, with per-patient
variation in size, position, exposure and noise. Abnormal images carry a nodule or an opacity inside a lung
with a pixel-exact lesion mask.
"""

from __future__ import annotations

import numpy as np


def generate(num: int, *, image_size: int, seed: int, abnormal_fraction: float = 0.5) -> dict[str, np.ndarray]:
    """Returns `image` uint8 [N, S, S, 1], `label` int32 [N] (1 = abnormal), `lesion_mask` uint8 [N, S, S]."""
    if not 16 <= image_size <= 1024:
        raise ValueError(f"phantom image_size must be in [16, 1024], got {image_size}")
    images = np.empty((num, image_size, image_size, 1), np.uint8)
    labels = np.empty((num,), np.int32)
    masks = np.empty((num, image_size, image_size), np.uint8)
    for i in range(num):
        rng = np.random.default_rng([seed, i])
        labels[i] = int(rng.random() < abnormal_fraction)
        image, masks[i] = _draw(rng, image_size, abnormal=bool(labels[i]))
        images[i, ..., 0] = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    return {"image": images, "label": labels, "lesion_mask": masks}


def _ellipse(y, x, cy, cx, ry, rx, angle=0.0):
    c, s = np.cos(angle), np.sin(angle)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def _draw(rng: np.random.Generator, size: int, abnormal: bool) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(-0.05, 0.05)
    cx, cy = 0.5 + rng.uniform(-0.03, 0.03), 0.5 + rng.uniform(-0.03, 0.03)
    scale = rng.uniform(0.9, 1.05)
    image = np.full((size, size), 0.05, np.float32)
    body = _ellipse(y, x, cy + 0.05, cx, 0.55 * scale, 0.44 * scale, angle)
    image[body] = 0.55
    lungs = np.zeros((size, size), bool)
    for side in (-1, 1):
        lung = _ellipse(y, x, cy - 0.02, cx + side * 0.17 * scale, 0.27 * scale, 0.12 * scale, angle + side * 0.1)
        lungs |= lung
    image[lungs] = 0.22
    for k in range(6):  # Ribs: thin bright arcs across the lung fields.
        ry = cy - 0.25 * scale + k * 0.08 * scale
        rib = np.abs(y - ry - 0.08 * (x - cx) ** 2 * 4) < 0.008 * scale
        image[rib & lungs] += 0.12
    heart = _ellipse(y, x, cy + 0.1, cx + 0.04, 0.13 * scale, 0.12 * scale, angle)
    image[heart] = 0.7
    spine = (np.abs(x - cx) < 0.035 * scale) & body
    image[spine] = np.maximum(image[spine], 0.8)
    lesion = np.zeros((size, size), bool)
    if abnormal:
        lesion = _lesion(rng, y, x, lungs & ~heart)
        image[lesion] += rng.uniform(0.25, 0.4)
    image *= rng.uniform(0.85, 1.15)  # Exposure.
    image += rng.normal(0.0, 0.02, image.shape).astype(np.float32)
    return image, lesion.astype(np.uint8)


def _lesion(rng: np.random.Generator, y, x, region: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(region)
    k = rng.integers(len(ys))
    size = region.shape[0]
    cy, cx = ys[k] / size, xs[k] / size
    if rng.random() < 0.5:  # Nodule.
        r = rng.uniform(0.03, 0.06)
        return _ellipse(y, x, cy, cx, r, r) & region
    return _ellipse(y, x, cy, cx, rng.uniform(0.06, 0.12), rng.uniform(0.04, 0.08), rng.uniform(0, np.pi)) & region
