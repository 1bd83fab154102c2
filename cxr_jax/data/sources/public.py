"""Loaders for public layouts users own (not downloadable here): CheXpert, NIH ChestX-ray14, folder + CSV.

Each is tested on a small fixture in the real layout that the test writes.
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np

from cxr_jax.data.sources.io import (
    DataError,
    in_split,
    parse_number,
    read_csv,
    read_gray,
    read_images,
    require_dir,
    square_coords,
)

CHEXPERT_OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices")
NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
UNCERTAIN = {"zeros": 0, "ones": 1, "ignore": -1}


def load_chexpert(spec, *, image_size: int, seed: int) -> dict[str, np.ndarray]:
    """CheXpert: `train.csv`/`valid.csv` and the JPGs they list.

    `findings` [N, 14] in CHEXPERT_OBSERVATIONS order: 1, 0, or -1 (unknown: blank, or uncertain under the
    'ignore' policy). `label`: 0 if No Finding, 1 if any finding
    other than Support Devices is positive, else -1.
    """
    del seed
    root = require_dir(spec.path, "chexpert")
    if spec.split not in ("train", "valid"):
        raise DataError(f"chexpert split must be train or valid; got {spec.split!r}")
    if spec.uncertain not in UNCERTAIN:
        raise DataError(f"data uncertain policy must be one of {sorted(UNCERTAIN)}; got {spec.uncertain!r}")
    meta = root / f"{spec.split}.csv"
    rows = read_csv(meta, ("Path", "Frontal/Lateral", *CHEXPERT_OBSERVATIONS))
    chosen = [(line, r) for line, r in enumerate(rows, start=2)
              if not spec.frontal_only or r["Frontal/Lateral"] == "Frontal"]
    chosen = chosen[:spec.num_examples] if spec.num_examples > 0 else chosen
    findings = np.array([[_chexpert_value(meta, line, c, r[c], spec.uncertain) for c in CHEXPERT_OBSERVATIONS]
                         for line, r in chosen], np.int32).reshape(-1, len(CHEXPERT_OBSERVATIONS))
    disease = findings[:, 1:-1]  # Neither No Finding nor Support Devices.
    label = np.where(findings[:, 0] == 1, 0, np.where((disease == 1).any(1), 1, -1)).astype(np.int32)
    images, sizes = read_images([_chexpert_file(root, r["Path"], meta, line) for line, r in chosen], image_size)
    return {"image": images, "label": label, "findings": findings, "orig_size": sizes,
            "name": np.asarray([r["Path"] for _, r in chosen], object)}


def _chexpert_value(path, line, column, text, policy) -> int:
    text = text.strip()
    if text == "":
        return -1
    value = int(parse_number(path, line, column, text))
    if value not in (-1, 0, 1):
        raise DataError(f"{path}: row {line}: {column} must be 1, 0, -1 or blank, got {text!r}")
    return UNCERTAIN[policy] if value == -1 else value


def _chexpert_file(root: pathlib.Path, rel: str, meta, line) -> pathlib.Path:
    """CSV paths start with the data set's folder name ('CheXpert-v1.0-small/train/…'); accept either root."""
    parts = pathlib.PurePosixPath(rel).parts
    for candidate in (root / rel, root.parent / rel, root.joinpath(*parts[1:])):
        if candidate.is_file():
            return candidate
    raise DataError(f"{meta}: row {line}: image {rel!r} not found under {root} or {root.parent}")


def load_nih14(spec, *, image_size: int, seed: int) -> dict[str, np.ndarray]:
    """NIH ChestX-ray14: `Data_Entry_2017.csv`, PNGs under `images/` (or `images_*/images/`).

    Split `train` reads `train_val_list.txt`, `test` reads `test_list.txt`, `all` everything. Optional
    `BBox_List_2017.csv` gives `boxes` [N, M, 4] (NaN padding) and `box`, their union. `findings` [N, 14] in
    NIH_FINDINGS order.
    """
    del seed
    root = require_dir(spec.path, "nih14")
    meta = root / "Data_Entry_2017.csv"
    rows = read_csv(meta, ("Image Index", "Finding Labels", "Patient ID", "View Position"))
    if spec.split != "all":
        names = _split_list(root, spec.split)
        rows = [r for r in rows if r["Image Index"] in names]
    rows = rows[:spec.num_examples] if spec.num_examples > 0 else rows
    index = _nih_image_index(root)
    findings = np.zeros((len(rows), len(NIH_FINDINGS)), np.int32)
    for i, r in enumerate(rows):
        for name in r["Finding Labels"].split("|"):
            if name == "No Finding":
                continue
            if name not in NIH_FINDINGS:
                raise DataError(f"{meta}: {r['Image Index']}: unknown finding {name!r}; expected {NIH_FINDINGS}")
            findings[i, NIH_FINDINGS.index(name)] = 1
    files = []
    for r in rows:
        if r["Image Index"] not in index:
            raise DataError(f"{root}: image {r['Image Index']} listed in {meta.name} is missing")
        files.append(index[r["Image Index"]])
    images, sizes = read_images(files, image_size)
    names = [r["Image Index"] for r in rows]
    boxes = _nih_boxes(root / "BBox_List_2017.csv", names, sizes, image_size)
    return {"image": images, "label": findings.any(1).astype(np.int32), "findings": findings, "orig_size": sizes,
            "name": np.asarray(names, object), "boxes": boxes, "box": _union(boxes)}


def _union(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] bounding box of each image's boxes; NaN where it has none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # All-NaN rows are images without boxes.
        return np.concatenate([np.nanmin(boxes[..., :2], 1), np.nanmax(boxes[..., 2:], 1)], 1).astype(np.float32)


def _split_list(root: pathlib.Path, split: str) -> set[str]:
    files = {"train": "train_val_list.txt", "test": "test_list.txt"}
    if split not in files:
        raise DataError(f"nih14 split must be train, test or all; got {split!r}")
    path = root / files[split]
    if not path.is_file():
        raise DataError(f"{path}: file is missing (needed for split {split!r})")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _nih_image_index(root: pathlib.Path) -> dict[str, pathlib.Path]:
    return {p.name: p for pattern in ("images/*.png", "images_*/images/*.png") for p in root.glob(pattern)}


def _nih_boxes(path: pathlib.Path, names, sizes, image_size) -> np.ndarray:
    """[N, M, 4] boxes (x0, y0, x1, y1) in resized pixels; the CSV gives x, y, w, h in original pixels."""
    per_image = {n: [] for n in names}
    if path.is_file():
        with open(path) as f:
            lines = f.read().splitlines()
        for line_no, line in enumerate(lines[1:], start=2):
            cells = line.split(",")
            if len(cells) < 6:
                raise DataError(f"{path}: row {line_no}: expected Image Index, Finding Label, x, y, w, h")
            if cells[0] in per_image:
                x, y, w, h = (parse_number(path, line_no, c, v) for c, v in zip("xywh", cells[2:6]))
                per_image[cells[0]].append((x, y, x + w, y + h))
    most = max([len(v) for v in per_image.values()] + [1])
    boxes = np.full((len(names), most, 4), np.nan, np.float32)
    for i, n in enumerate(names):
        for j, b in enumerate(per_image[n]):
            boxes[i, j] = square_coords([b[:2], b[2:]], tuple(sizes[i]), image_size, edges=True).reshape(4)
    return boxes


def load_folder(spec, *, image_size: int, seed: int) -> dict[str, np.ndarray]:
    """Any folder with a `metadata.csv`.

    Columns: `image` (path relative to the folder) and optionally `label` (0/1, blank for unknown), `split`
    (else a hash split: train/valid/all), `text`, `mask` (a binary mask image).
    """
    del seed
    root = require_dir(spec.path, "folder")
    meta = root / "metadata.csv"
    rows = read_csv(meta, ("image",))
    columns = set(rows[0]) if rows else set()
    chosen = [(line, r) for line, r in enumerate(rows, start=2)
              if (r["split"] == spec.split if "split" in columns else in_split(r["image"], spec.split))
              or spec.split == "all"]
    chosen = chosen[:spec.num_examples] if spec.num_examples > 0 else chosen
    if not chosen:
        raise DataError(f"{meta}: no rows for split {spec.split!r}")
    labels = []
    for line, r in chosen:
        text = r.get("label", "").strip()
        if text not in ("", "0", "1"):
            raise DataError(f"{meta}: row {line}: label must be 0, 1 or blank, got {text!r}")
        labels.append(int(text) if text else -1)
    images, sizes = read_images([root / r["image"] for _, r in chosen], image_size)
    out = {"image": images, "label": np.asarray(labels, np.int32), "orig_size": sizes,
           "name": np.asarray([r["image"] for _, r in chosen], object)}
    if "text" in columns:
        out["text"] = np.asarray([r["text"] for _, r in chosen], object)
    if "mask" in columns:
        out["has_mask"] = np.asarray([bool(r["mask"].strip()) for _, r in chosen])
        out["mask_lesion"] = np.stack([read_gray(root / r["mask"], image_size, mask=True)[0] if r["mask"].strip()
                                       else np.zeros((image_size, image_size), np.uint8) for _, r in chosen])
    return out

