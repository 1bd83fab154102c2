"""RSNA Pneumonia Detection Challenge: DICOM images, lung-opacity boxes and the detailed class of each patient.

Layout (as downloaded from Kaggle):
  stage_2_train_labels.csv          patientId, x, y, width, height, Target (one row per box; blank box if none)
  stage_2_detailed_class_info.csv   patientId, class (Normal | Lung Opacity | No Lung Opacity / Not Normal)
  stage_2_train_images/<patientId>.dcm, stage_2_test_images/<patientId>.dcm
"""

from __future__ import annotations

import numpy as np

from cxr_jax.data.sources.fileio import (
    DataError,
    collect,
    first,
    header_size,
    in_split,
    parse_number,
    read_csv,
    require_dir,
)
from cxr_jax.data.sources.public import resize_boxes, union

CLASSES = ("Normal", "Lung Opacity", "No Lung Opacity / Not Normal")


def load_rsna(spec, *, image_size: int, seed: int) -> dict[str, np.ndarray]:
    """Split `train`/`valid` (by a hash of the patient), `all` (both) or `test` (unlabelled test images).

    `findings` [N, 1] is the challenge Target (lung opacity); `label` is 0 for class Normal and 1 otherwise
    ('No Lung Opacity / Not Normal' is abnormal), or -1 without the class file where Target is 0.
    `boxes` [N, M, 4] and their union `box` in resized pixels.
    """
    del seed
    root = require_dir(spec.path, "rsna")
    if spec.split == "test":
        patients = sorted(p.stem for p in (root / "stage_2_test_images").glob("*.dcm"))
        rows = [(0, {"patientId": p, "Target": "", "boxes": []}) for p in patients]
        folder = "stage_2_test_images"
    elif spec.split in ("train", "valid", "all"):
        rows = [(line, r) for line, r in _patients(root) if in_split(r["patientId"], spec.split)]
        folder = "stage_2_train_images"
    else:
        raise DataError(f"rsna split must be train, valid, all or test; got {spec.split!r}")
    rows = first(rows, spec)
    classes = _classes(root / "stage_2_detailed_class_info.csv")
    most = max([len(r["boxes"]) for _, r in rows] + [1])

    def read_row(line, r):
        file = root / folder / f"{r['patientId']}.dcm"
        boxes = resize_boxes(r["boxes"], most, header_size(file), image_size)
        target = int(r["Target"]) if r["Target"] else -1
        cls = classes.get(r["patientId"])
        label = (0 if cls == "Normal" else 1) if cls else (1 if target == 1 else -1)
        return {"file": file, "name": r["patientId"], "findings": [target], "label": label, "boxes": boxes,
                "box": union(boxes)}

    return collect(rows, read_row, spec=spec, image_size=image_size, where=f"rsna {spec.split}")


def _patients(root) -> list[tuple[int, dict]]:
    """One (first CSV line, row) per patient with its boxes (x0, y0, x1, y1) gathered from all its rows."""
    path = root / "stage_2_train_labels.csv"
    patients = {}
    for line, r in enumerate(read_csv(path, ("patientId", "x", "y", "width", "height", "Target")), start=2):
        if r["Target"] not in ("0", "1"):
            raise DataError(f"{path}: row {line}: Target must be 0 or 1, got {r['Target']!r}")
        entry = patients.setdefault(r["patientId"], (line, {"patientId": r["patientId"], "Target": r["Target"],
                                                            "boxes": []}))[1]
        if entry["Target"] != r["Target"]:
            raise DataError(f"{path}: row {line}: patient {r['patientId']} has both Target 0 and 1")
        if r["Target"] == "1":
            x, y, w, h = (parse_number(path, line, c, r[c]) for c in ("x", "y", "width", "height"))
            entry["boxes"].append((x, y, x + w, y + h))
    return list(patients.values())


def _classes(path) -> dict[str, str]:
    if not path.is_file():
        return {}
    classes = {}
    for line, r in enumerate(read_csv(path, ("patientId", "class")), start=2):
        if r["class"] not in CLASSES:
            raise DataError(f"{path}: row {line}: class must be one of {CLASSES}, got {r['class']!r}")
        classes[r["patientId"]] = r["class"]
    return classes
