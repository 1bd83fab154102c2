"""Loaders for public layouts users own (not downloadable here): CheXpert, NIH ChestX-ray14, folder + CSV.

Each is tested on a small fixture in the real layout that the test writes.
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np

from cxr_jax.data.sources.fileio import (
    DataError,
    blank_mask,
    collect,
    first,
    header_size,
    in_split,
    parse_number,
    read_csv,
    read_gray,
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
    'ignore' policy); `label` from `chexpert_label`.
    """
    del seed
    root = require_dir(spec.path, "chexpert")
    if spec.split not in ("train", "valid"):
        raise DataError(f"chexpert split must be train or valid; got {spec.split!r}")
    check_policy(spec)
    meta = root / f"{spec.split}.csv"
    rows = read_csv(meta, ("Path", "Frontal/Lateral", *CHEXPERT_OBSERVATIONS))
    chosen = [(line, r) for line, r in enumerate(rows, start=2)
              if not spec.frontal_only or r["Frontal/Lateral"] == "Frontal"]
    chosen = first(chosen, spec)

    def read_row(line, r):
        findings = [chexpert_value(meta, line, c, r[c], spec.uncertain) for c in CHEXPERT_OBSERVATIONS]
        return {"file": listed_file(root, r["Path"], meta, line), "name": r["Path"], "findings": findings,
                "label": chexpert_label(findings)}

    return collect(chosen, read_row, spec=spec, image_size=image_size, where=f"chexpert {spec.split}")


def chexpert_label(findings) -> int:
    """0 if No Finding, 1 if any finding other than Support Devices is positive, else -1 (unknown)."""
    if findings[0] == 1:
        return 0
    return 1 if any(v == 1 for v in findings[1:-1]) else -1


def check_policy(spec) -> None:
    """The uncertain-label policy must be one of UNCERTAIN."""
    if spec.uncertain not in UNCERTAIN:
        raise DataError(f"data uncertain policy must be one of {sorted(UNCERTAIN)}; got {spec.uncertain!r}")


def chexpert_value(path, line, column, text, policy) -> int:
    """A CheXpert-labeller cell ('1', '0', '-1', '1.0', …, or blank) under the uncertain-label policy."""
    text = text.strip()
    if text == "":
        return -1
    value = parse_number(path, line, column, text)
    if value not in (-1, 0, 1):
        raise DataError(f"{path}: row {line}: {column} must be 1, 0, -1 or blank, got {text!r}")
    return UNCERTAIN[policy] if value == -1 else int(value)


def listed_file(root: pathlib.Path, rel: str, meta, line) -> pathlib.Path:
    """A CSV's image path under `root`, its parent, or `root` without the path's first folder.

    CheXpert's paths start with the data set's folder name ('CheXpert-v1.0-small/train/…'); accept either root.
    """
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
    rows = first(rows, spec)
    index = _nih_image_index(root)
    boxes = _read_boxes(root / "BBox_List_2017.csv", {r["Image Index"] for r in rows})
    most = max([len(b) for b in boxes.values()] + [1])

    def read_row(line, r):
        name = r["Image Index"]
        findings = nih_findings(r["Finding Labels"], meta, line)
        if name not in index:
            raise DataError(f"{root}: image {name} listed in {meta.name} (row {line}) is missing")
        resized = resize_boxes(boxes[name], most, header_size(index[name]), image_size)
        return {"file": index[name], "name": name, "findings": findings, "label": int(findings.any()),
                "boxes": resized, "box": union(resized)}

    return collect(enumerate(rows, start=2), read_row, spec=spec, image_size=image_size,
                   where=f"nih14 {spec.split}")


def nih_findings(labels: str, path, line: int) -> np.ndarray:
    """'|'-separated NIH labels ('No Finding' alone for normals) as int32 [14] in NIH_FINDINGS order."""
    findings = np.zeros(len(NIH_FINDINGS), np.int32)
    for finding in labels.split("|"):
        if finding != "No Finding":
            if finding not in NIH_FINDINGS:
                raise DataError(f"{path}: row {line}: unknown finding {finding!r}; expected {NIH_FINDINGS}")
            findings[NIH_FINDINGS.index(finding)] = 1
    return findings


def union(boxes: np.ndarray) -> np.ndarray:
    """The bounding box [4] of boxes [M, 4] (NaN padding); NaN when there are none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # All-NaN: an image without boxes.
        return np.concatenate([np.nanmin(boxes[:, :2], 0), np.nanmax(boxes[:, 2:], 0)]).astype(np.float32)


def resize_boxes(boxes: list, most: int, orig_size, image_size: int) -> np.ndarray:
    """[most, 4] boxes (x0, y0, x1, y1) in resized pixels from original-pixel ones; NaN padding."""
    out = np.full((most, 4), np.nan, np.float32)
    for j, b in enumerate(boxes):
        out[j] = square_coords([b[:2], b[2:]], orig_size, image_size, edges=True).reshape(4)
    return out


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


def _read_boxes(path: pathlib.Path, names: set[str]) -> dict[str, list]:
    """Boxes (x0, y0, x1, y1) per image name from NIH's `BBox_List_2017.csv` (x, y, w, h); none if absent."""
    per_image = {n: [] for n in names}
    if not path.is_file():
        return per_image
    with open(path) as f:
        lines = f.read().splitlines()
    for line_no, line in enumerate(lines[1:], start=2):
        cells = line.split(",")
        if len(cells) < 6:
            raise DataError(f"{path}: row {line_no}: expected Image Index, Finding Label, x, y, w, h")
        if cells[0] in per_image:
            x, y, w, h = (parse_number(path, line_no, c, v) for c, v in zip("xywh", cells[2:6]))
            per_image[cells[0]].append((x, y, x + w, y + h))
    return per_image


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
    chosen = first(chosen, spec)
    if not chosen:
        raise DataError(f"{meta}: no rows for split {spec.split!r}")

    def read_row(line, r):
        label = r.get("label", "").strip()
        if label not in ("", "0", "1"):
            raise DataError(f"{meta}: row {line}: label must be 0, 1 or blank, got {label!r}")
        example = {"file": root / r["image"], "name": r["image"], "label": int(label) if label else -1}
        if "text" in columns:
            example["text"] = r["text"]
        if "mask" in columns:
            has_mask = bool(r["mask"].strip())
            example["has_mask"] = has_mask
            example["mask_lesion"] = (read_gray(root / r["mask"], image_size, mask=True)[0] if has_mask
                                      else blank_mask(image_size))
        return example

    return collect(chosen, read_row, spec=spec, image_size=image_size, where=f"folder {spec.split}")
