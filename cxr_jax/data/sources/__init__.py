"""Data sources: a name (config `data.*.source`) and a directory in that source's layout.

A loader returns a dict of NumPy arrays sharing their leading length N. Keys, where the source has them:
  image        uint8 [N, S, S, 1]  padded to a square (centred) and resized to the run's image size
  label        int32 [N]           1 abnormal, 0 normal, -1 unknown
  orig_size    int32 [N, 2]        (height, width) before resizing
  name         object [N]          the file the example came from
  patient      object [N]          the patient (nih1000, covid), for patient-grouped statistics
  mask_lungs, mask_heart, mask_clavicles   uint8 [N, S, S] (0/1); `has_mask` bool [N] where only some have one
  mask_left_lung, mask_right_lung          uint8 [N, S, S] (jsrt; the patient's sides)
  landmarks    float32 [N, K, 2]   (x, y) in resized pixels, NaN where absent
  heart_centre float32 [N, 1, 2]   (jsrt) LD's chest landmark from the heart mask at full size, resized pixels
  box          float32 [N, 4]      lesion box (x0, y0, x1, y1) in resized pixels, NaN where absent
  boxes        float32 [N, M, 4]   every box where there can be several (NaN padding); `box` is their union
  findings     int32 [N, F]        per-finding labels in the source's order (1, 0, -1 unknown)
  text         object [N]          report or note text (reports: "FINDINGS: … IMPRESSION: …")
  report_findings, report_impression   object [N]   the two report sections on their own
  file         object [N]          the image file; with `data.*.stream` it replaces `image` (decoded in tf.data);
                                   read from a prepared TFDS set (`data.*.tfds_data_dir`), a record reference
Every loader reads its rows through `fileio.collect`, so `data.*.on_error` ('raise' | 'skip') and `data.*.stream`
(keep `file`, decode in the pipeline) work the same for every source.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from cxr_jax.data.sources.catalog import SOURCES
from cxr_jax.data.sources.fileio import DataError, read_gray

__all__ = ["DataError", "SOURCES", "concatenate", "describe", "head", "images_only", "labelled_images", "load",
           "read_gray", "with_masks"]


def load(spec: ml_collections.ConfigDict, *, image_size: int, seed: int) -> dict[str, np.ndarray]:
    """Loads `spec.source` from `spec.path`, split `spec.split`, at most `spec.num_examples` (0: all).

    With `spec.tfds_data_dir` the split is read from the TFDS dataset `cxr-jax data prepare` built there instead
    (`cxr_jax.data.tfds_sets`): the same arrays, `file` naming each example's record.
    """
    if spec.source not in SOURCES:
        raise DataError(f"unknown data source {spec.source!r}; known: {sorted(SOURCES)}")
    if spec.get("tfds_data_dir"):
        if spec.source == "phantom":
            raise DataError("the phantom is generated, not prepared: set its data.*.tfds_data_dir to None")
        from cxr_jax.data import tfds_sets  # Imports tensorflow_datasets: only for prepared sets.

        return tfds_sets.load(spec, image_size=image_size, seed=seed)
    return SOURCES[spec.source][0](spec, image_size=image_size, seed=seed)




def head(spec: ml_collections.ConfigDict, num: int, *, image_size: int, seed: int) -> dict[str, np.ndarray]:
    """The first `num` examples of a set, with their `image` uint8 [n, S, S, 1] in memory even when streamed.

    For a few fixed pictures (sample images during training): the same examples at every step.
    """
    data = {k: v[:num] for k, v in load(spec, image_size=image_size, seed=seed).items()}
    if "image" not in data:
        data["image"] = np.stack([read_gray(f, image_size)[0][..., None] for f in data["file"]])
    return data


def images_only(data: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Just the `image` (or, streamed, `file`) of every example: self-supervised training needs no labels."""
    key = "image" if "image" in data else "file"
    if key not in data:
        raise DataError(f"data source {source!r} has no images")
    return {key: data[key]}


def concatenate(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Examples of several sets as one (the same keys in each: all streamed or all in memory)."""
    if len({frozenset(p) for p in parts}) > 1:
        raise DataError("training sets mix streamed (file) and in-memory (image) examples, or carry different "
                        f"fields ({[sorted(p) for p in parts]}); set data.*.stream the same for every set")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def with_masks(data: dict[str, np.ndarray], structures, spec: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """`image` (or `file`) and `masks` uint8 [N, S, S, C] (`structures` order) of the examples that have masks."""
    missing = [s for s in structures if f"mask_{s}" not in data]
    if missing:
        raise DataError(f"data source {spec.source!r} at {spec.path}: no {missing} masks; each structure needs "
                        f"mask_<structure> (this set has {sorted(k[5:] for k in data if k.startswith('mask_'))})")
    key = "image" if "image" in data else "file"
    masks = np.stack([data[f"mask_{s}"] for s in structures], axis=-1)
    keep = data.get("has_mask", np.ones(len(masks), bool))  # covid: only some images have a mask.
    return {key: data[key][keep], "masks": masks[keep]}


def labelled_images(data: dict[str, np.ndarray], source: str, *, ids: bool = False) -> dict[str, np.ndarray]:
    """`image` (or, streamed, `file`) and `label` of the examples whose label is known (0 or 1).

    With `ids`, also the string `name` and `patient` where the source has them (for per-image predictions and
    patient-grouped statistics; strings cannot enter a jitted step, so callers take them out first).
    """
    key = "image" if "image" in data else "file"
    if key not in data:
        raise DataError(f"data source {source!r} has no images")
    keep = data["label"] >= 0
    if not keep.any():
        raise DataError(f"data source {source!r}: no example has a known normal/abnormal label")
    keys = (key, "label", *(("name", "patient") if ids else ()))
    return {k: data[k][keep] for k in keys if k in data}


def describe(data: dict[str, np.ndarray]) -> dict:
    """The summary `cxr-jax data inspect` prints."""
    num = len(next(iter(data.values()))) if data else 0
    sizes = data.get("orig_size")
    labels = data.get("label", np.full(num, -1))
    has_mask = data.get("has_mask", np.ones(num, bool) if any(k.startswith("mask_") for k in data) else
                        np.zeros(num, bool))

    def finite(key, axes):
        return int(np.isfinite(data[key]).all(axis=axes).sum()) if key in data else 0

    images = data.get("image", data.get("file", ()))
    return {
        "num_images": len(images),
        "num_skipped": len(getattr(data, "skipped", ())),
        "image_size_range": ({"min_hw": sizes.min(0).tolist(), "max_hw": sizes.max(0).tolist()}
                             if sizes is not None and len(sizes) else None),
        "label_counts": {"normal": int((labels == 0).sum()), "abnormal": int((labels == 1).sum()),
                         "unknown": int((labels < 0).sum())} if len(images) else {},
        "num_with_masks": int(has_mask.sum()),
        "num_with_landmarks": finite("landmarks", (1, 2)),
        "num_with_boxes": finite("box", 1),
        "num_with_text": int(sum(bool(t) for t in data["text"])) if "text" in data else 0,
    }
