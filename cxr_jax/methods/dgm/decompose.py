"""A trained DGM's residues for other runs, and the lung masks its saliency is computed inside.

Lung masks come from a mask per image (`lung_masks`: DIR/NAME.png, or DIR/left_lung/NAME.png and
DIR/right_lung/NAME.png as in the jsrt layout); without masks from the lung segmenter run named by
`saliency.lung_segmenter` (`methods.segment.segmenter`); without either the whole image counts as lung.
The `cxr-jax decompose` command (`cli/decompose.py`) writes the maps and saliency for any images.
"""

from __future__ import annotations

import pathlib

import numpy as np

from cxr_jax import parallel, runs
from cxr_jax.config import ConfigError
from cxr_jax.data.sources import fileio
from cxr_jax.methods.segment import segmenter as segment

LUNG_MASK_PARTS = ("left_lung", "right_lung")


def residue_maps(workdir: str | pathlib.Path, images: np.ndarray, *, image_size: int) -> np.ndarray:
    """A trained DGM's residues r float32 [N, S, S, 1] of uint8 images [N, S, S, 1] (S = its image size)."""
    mesh = parallel.make_mesh()
    config, method, state, _ = runs.restore_run(workdir, "dgm", needed="a DGM run (configs/dgm.py)", mesh=mesh)
    if config.image_size != image_size:
        raise ConfigError(f"the DGM run {workdir} works at image_size={config.image_size}, this run at "
                          f"{image_size}; residues must come from images of the same size")
    outputs, _ = runs.predict(method, state, {"image": images}, mesh, fn=method.decompose)
    return outputs["residue"].astype(np.float32)


def lung_masks_for(config, files, pixels: np.ndarray, lung_masks) -> list[np.ndarray | None]:
    """Each image's lung mask: from `lung_masks`, else the configured segmenter, else None (whole image)."""
    if lung_masks:
        return [read_lung_mask(lung_masks, f, pixels.shape[1]) for f in files]
    if config.saliency.lung_segmenter:
        return list(segment.Segmenter(config.saliency.lung_segmenter).lungs(pixels))
    return [None] * len(files)


def read_lung_mask(directory: str | pathlib.Path, image: pathlib.Path, size: int) -> np.ndarray:
    """The lung mask of `image` at `size`: DIR/NAME.png, or the union of DIR/{left,right}_lung/NAME.png."""
    directory = pathlib.Path(directory)
    single = directory / f"{image.stem}.png"
    if single.is_file():
        return fileio.read_gray(single, size, mask=True)[0]
    parts = [directory / part / f"{image.stem}.png" for part in LUNG_MASK_PARTS]
    if all(p.is_file() for p in parts):
        return np.maximum(*(fileio.read_gray(p, size, mask=True)[0] for p in parts))
    raise fileio.DataError(f"no lung mask for {image}: expected {single} or {parts[0]} and {parts[1]}")
