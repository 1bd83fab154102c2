"""`cxr-jax decompose`: a trained DGM's synthesised normal, residue and saliency for any images.

For each image NAME it writes, at the model's resolution (the image padded to a square and resized):
  NAME_normal.png    the synthesised normal y′
  NAME_residue.png   the residue r, signed (blue: removed intensity, red: added)
  NAME_heatmap.png   the saliency scores, normalised to their maximum, over the input
  NAME_saliency.png  the kept components (red) and their boxes (yellow), lung boxes (green), over the input
  NAME.json          threshold, lung boxes and each component's box and score, in model pixels and in the
                     original image's pixels
Lung boxes come from `lung_masks` or the configured segmenter (`methods.dgm.decompose.lung_masks_for`).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

import ml_collections
import numpy as np
from PIL import Image

from cxr_jax import parallel, runs
from cxr_jax.data.sources import fileio
from cxr_jax.methods.dgm import decompose, pictures, saliency


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, images: Sequence[str | pathlib.Path],
        out: str | pathlib.Path, lung_masks: str | pathlib.Path | None = None,
        which: str | int = "latest") -> list[dict]:
    """Decomposes every image under `images` with checkpoint `which`; returns the records written as NAME.json."""
    mesh = parallel.make_mesh()
    _, method, state, step = runs.restore_run(workdir, "dgm", needed="a DGM run (configs/dgm.py)", mesh=mesh,
                                              config=config, which=which)
    size = config.image_size
    files, pixels, orig_sizes = fileio.read_images(images, size)
    masks = decompose.lung_masks_for(config, files, pixels, lung_masks)  # Fails before anything is written.
    outputs, _ = runs.predict(method, state, {"image": pixels}, mesh, fn=method.decompose)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (file, orig_size, mask) in enumerate(zip(files, orig_sizes, masks)):
        boxes = saliency.lung_boxes(mask) if mask is not None else []
        found = pictures.find(config, pictures.anomaly_map(config, outputs)[i], boxes)
        record = _record(file, orig_size, size, boxes, found, workdir, step)
        write_outputs(out / file.stem, pixels[i, ..., 0], outputs["normal"][i], outputs["residue"][i], found, boxes)
        (out / f"{file.stem}.json").write_text(json.dumps(record, indent=2) + "\n")
        records.append(record)
    return records


def _record(file, orig_size, size: int, boxes, found: dict, workdir, step: int) -> dict:
    def original(box):
        corners = fileio.original_coords(np.reshape(box, (2, 2)), orig_size, size, edges=True)
        return [round(float(v), 2) for v in corners.ravel()]

    return {
        "image": str(file), "workdir": str(workdir), "step": step, "image_size": size,
        "original_size": list(orig_size), "threshold": found["threshold"],
        "lung_boxes": [list(b) for b in boxes], "lung_boxes_original": [original(b) for b in boxes],
        "components": [{**c.to_json(), "box_original": original(c.box)} for c in found["components"]],
    }


def write_outputs(stem: pathlib.Path, image: np.ndarray, normal: np.ndarray, residue: np.ndarray, found: dict,
                  boxes) -> None:
    """The four PNGs of one image (uint8 `image` [H, W]; `normal`, `residue` [H, W, 1] in [-1, 1])."""
    Image.fromarray(pictures.gray(normal)).save(f"{stem}_normal.png")
    Image.fromarray(pictures.residue_rgb(residue)).save(f"{stem}_residue.png")
    Image.fromarray(pictures.heatmap(image, found)).save(f"{stem}_heatmap.png")
    Image.fromarray(pictures.saliency_overlay(image, found, boxes)).save(f"{stem}_saliency.png")
