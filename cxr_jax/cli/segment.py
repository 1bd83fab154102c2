"""`cxr-jax segment`: a trained segmenter's masks for any images.

For each image NAME it writes, at the original image's size, NAME_<structure>.png (0/255) per structure and
NAME_overlay.png (the structures' outlines over the image).
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from cxr_jax.data.sources import fileio
from cxr_jax.methods.segment.segmenter import Segmenter, overlay, to_original


def run(workdir: str | pathlib.Path, *, images: Sequence[str | pathlib.Path], out: str | pathlib.Path,
        which: str | int = "latest") -> list[dict]:
    """Segments every image under `images` with checkpoint `which`, writes masks and overlays; returns areas."""
    segmenter = Segmenter(workdir, which=which)
    files = fileio.image_files(images)
    originals = [fileio.decode(f) for f in files]  # Decoded once: squared for the model, kept for the overlays.
    masks = segmenter.masks(np.stack([fileio.to_square(a, segmenter.config.image_size)[0] for a in originals]))
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for file, original, mask in zip(files, originals, masks):
        full = np.stack([to_original(mask[..., c], original.shape) for c in range(mask.shape[-1])], -1)
        for c, name in enumerate(segmenter.structures):
            Image.fromarray(full[..., c] * 255).save(out / f"{file.stem}_{name}.png")
        overlay(original, full).save(out / f"{file.stem}_overlay.png")
        records.append({"image": str(file), **{f"area_{s}": float(full[..., c].mean())
                                               for c, s in enumerate(segmenter.structures)}})
    return records
