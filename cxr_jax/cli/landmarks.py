"""`cxr-jax landmarks`: a template's points located in images with a trained LD run; CSV in, CSVs and overlays out."""

from __future__ import annotations

import csv
import pathlib
from collections.abc import Sequence

import ml_collections
import numpy as np

from cxr_jax.data.sources import fileio
from cxr_jax.methods.ld.landmarks import Localiser, draw, read_points


def write_points(path: pathlib.Path, names: Sequence[tuple[str, int]], xy: np.ndarray) -> None:
    """The same layout as `read_points` reads."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["structure", "index", "x", "y"])
        for (structure, index), (x, y) in zip(names, xy):
            writer.writerow([structure, index, f"{x:.2f}", f"{y:.2f}"])


def run(config: ml_collections.ConfigDict | None, workdir: str | pathlib.Path, *, template: str | pathlib.Path,
        template_landmarks: str | pathlib.Path, images: Sequence[str | pathlib.Path],
        out: str | pathlib.Path, which: str | int = "latest") -> list[dict]:
    """Writes NAME.csv (the template's rows, located in NAME, in NAME's pixels) and NAME_landmarks.png.

    `config` defaults to the run's own (`WORKDIR/config.json`); `which` picks the checkpoint.
    """
    localiser = Localiser(workdir, config, which=which)
    size = localiser.config.image_size
    names, points = read_points(template_landmarks)
    _, template_image, (template_size,) = fileio.read_images([template], size)
    template_xy = fileio.square_coords(points, template_size, size)
    keys = localiser.keys(template_image[0], template_xy)
    files = fileio.image_files(images)
    originals = [fileio.decode(f) for f in files]
    located = localiser.locate(np.stack([fileio.to_square(a, size)[0][..., None] for a in originals]), keys,
                               template_xy)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for file, original, xy in zip(files, originals, located):
        xy = fileio.original_coords(xy, original.shape[:2], size)
        write_points(out / f"{file.stem}.csv", names, xy)
        draw(original, {"located": xy}).save(out / f"{file.stem}_landmarks.png")
        records.append({"image": str(file), "landmarks": len(xy)})
    return records
