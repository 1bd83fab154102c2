"""The shape prior's mean shape, placed on each image where it best fits cluster channel 0.

The unpaired prior makes channel 0 look like *some* mask of `shape.structure`, and one realistic mask
scores below the average of several on an aligned set (docs/ld.md). What channel 0 does carry is where the
structure lies in this image. So the placed answer keeps the average shape and takes only its position and
size from channel 0: the mean of the prior's masks (> 0.5), scaled about the image centre and shifted over a
grid, and for each image the candidate with the highest Dice against channel 0 > 0.5. The truth is never used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def candidates(mean_mask: np.ndarray, *, scales: Sequence[float], max_shift: float,
               shift_steps: int) -> np.ndarray:
    """Boolean [len(scales)·(2·shift_steps + 1)², S, S]: `mean_mask` [S, S] in [0, 1], scaled then shifted.

    Shifts run evenly over ±`max_shift` (a fraction of the side S) in each direction, in whole pixels.
    """
    size = mean_mask.shape[0]
    centre = (size - 1) / 2
    shifts = np.unique(np.round(np.linspace(-max_shift, max_shift, 2 * shift_steps + 1) * size).astype(int))
    out = []
    for s in scales:
        scaled = ndimage.affine_transform(mean_mask.astype(np.float32), np.eye(2) / s,
                                          offset=centre - centre / s, order=1) > 0.5
        out += [np.roll(scaled, (dy, dx), (0, 1)) for dy in shifts for dx in shifts]
    return np.stack(out)


def candidates_for(mean_mask: np.ndarray, shape_config) -> np.ndarray:
    """`candidates` on the grid a run's config names: `shape.place_scales`, `.place_max_shift`, `.place_shift_steps`."""
    return candidates(mean_mask, scales=shape_config.place_scales, max_shift=shape_config.place_max_shift,
                      shift_steps=shape_config.place_shift_steps)


def place(maps: np.ndarray, evidence: np.ndarray, *, chunk: int = 256) -> np.ndarray:
    """For each boolean evidence mask [N, S, S], the candidate of `maps` [P, S, S] with the highest Dice: [N, S, S].

    Candidates are scored `chunk` at a time (at 448 px all 1521 as floats would take 1.2 GB).
    """
    ev = evidence.reshape(len(evidence), -1).astype(np.float32)
    dice = np.empty((len(evidence), len(maps)), np.float32)
    for i in range(0, len(maps), chunk):
        flat = maps[i:i + chunk].reshape(-1, ev.shape[1]).astype(np.float32)
        sizes = ev.sum(axis=1, keepdims=True) + flat.sum(axis=1)[None]
        dice[:, i:i + chunk] = 2 * (ev @ flat.T) / np.maximum(sizes, 1)
    return maps[dice.argmax(axis=1)]
