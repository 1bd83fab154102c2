"""`cxr-jax decompose`: a trained DGM's synthesised normal, residue and saliency for any images.

The model sees each image padded to a square and resized (`fileio.read_images`); its maps are mapped back
onto the input's own pixels (`fileio.from_square`: resized to the square's side, padding cropped off). For
each image NAME (h × w) it writes:
  NAME_normal.png    the synthesised normal y′
  NAME_residue.png   the residue r, signed (blue: removed intensity, red: added), with a colour bar in gray
                     levels of the 8-bit input
  NAME_heatmap.png   the saliency scores, ÷ their maximum, over the input, with a colour bar
  NAME_saliency.png  the kept components (red) and their boxes (yellow), lung boxes (green), over the input,
                     with a legend
  NAME_residue.npy   the raw signed residue r, float32 [h, w], in the model's units (the input's gray range
                     is [-1, 1]: × 127.5 for gray levels)
  NAME.json          threshold, lung boxes and each component's box and score, in model pixels and in the
                     original image's pixels
The PNGs are h × w pixels, enlarged by an integer factor where the longer side is under 256 px
(`pictures.display_scale`); saliency is computed at the model's resolution, from `saliency.source`'s map.
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
    maps = pictures.anomaly_map(config, outputs)
    records = []
    for i, (file, orig_size, mask) in enumerate(zip(files, orig_sizes, masks)):
        boxes = saliency.lung_boxes(mask) if mask is not None else []
        found = pictures.find(config, maps[i], boxes)
        record = _record(file, orig_size, size, boxes, found, workdir, step)
        # Decoded again rather than kept from `read_images`: one full-size image in memory at a time.
        write_outputs(out / file.stem, fileio.decode(file), outputs["normal"][i], outputs["residue"][i], found,
                      boxes)
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


def write_outputs(stem: pathlib.Path, original: np.ndarray, normal: np.ndarray, residue: np.ndarray, found: dict,
                  boxes) -> None:
    """One image's four PNGs and residue array at its own size (see the module's docstring).

    `original`: the decoded input, uint8 [h, w]; `normal`, `residue` [S, S, 1] in [-1, 1], `found` and lung
    `boxes` at the model's resolution.
    """
    np.save(f"{stem}_residue.npy", fileio.from_square(residue[..., 0], original.shape))
    for kind, picture in pictures.full_size(original, normal, residue, found, boxes).items():
        Image.fromarray(picture).save(f"{stem}_{kind}.png")
