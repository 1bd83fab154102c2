"""Loaders for the layouts of `../shared/data` (its README): nih1000, jsrt, openist, covid, iu_reports.

Each reads any directory in the same layout. Sets without a split column are split deterministically by a
hash of the patient (covid) or image name: `train` ≈ 80 %, `valid` ≈ 20 %, `all` everything.
"""

from __future__ import annotations

import pathlib
import re
import tarfile
import xml.etree.ElementTree as ET
import zlib

import numpy as np

from cxr_jax.data.sources import public
from cxr_jax.data.sources.fileio import (
    ON_ERROR,
    DataError,
    Examples,
    blank_mask,
    collect,
    first,
    header_size,
    in_split,
    log,
    parse_number,
    read_csv,
    read_gray,
    report_text,
    require_dir,
    square_coords,
    to_square,
)

JSRT_STRUCTURES = ("right_lung", "left_lung", "heart")  # Landmark order: same index = same point.
MAX_REPORT_BYTES = 2**24  # One IU report XML is a few kB; a member this large is refused unread.


def load_nih1000(spec, *, image_size: int, seed: int) -> dict[str, np.ndarray]:
    """NIH ChestX-ray14 subset: `metadata.csv` (image, split, abnormal, …) and `images/*.png`.

    `findings` [N, 14] in NIH_FINDINGS order when the CSV has `finding_labels`. With `spec.patient_split` the
    CSV's split column is ignored and rows are split by a hash of `patient_id` (`in_split`): the shipped
    nih1000 splits share 15 patients, whose follow-up images are normal in train and abnormal in valid, so a
    model that recognises patients scores below chance there.
    """
    del seed
    root = require_dir(spec.path, "nih1000")
    meta = root / "metadata.csv"
    if spec.patient_split:
        rows = [(line, r) for line, r in enumerate(read_csv(meta, ("image", "abnormal", "patient_id")), start=2)
                if in_split(r["patient_id"], spec.split)]
    else:
        rows = [(line, r) for line, r in enumerate(read_csv(meta, ("image", "split", "abnormal")), start=2)
                if spec.split in ("all", r["split"])]
    if not rows:
        raise DataError(f"{meta}: no rows in split {spec.split!r}" + (" (by patient)" if spec.patient_split else ""))
    rows = first(rows, spec)

    def read_row(line, r):
        if r["abnormal"] not in ("0", "1"):
            raise DataError(f"{meta}: row {line}: abnormal must be 0 or 1, got {r['abnormal']!r}")
        example = {"file": root / r["image"], "label": int(r["abnormal"]), "name": r["image"]}
        if "patient_id" in r:
            example["patient"] = r["patient_id"]
        if "finding_labels" in r:
            example["findings"] = public.nih_findings(r["finding_labels"], meta, line)
        return example

    return collect(rows, read_row, spec=spec, image_size=image_size, where=f"nih1000 {spec.split}")


def load_jsrt(spec, *, image_size: int, seed: int) -> dict[str, np.ndarray]:
    """JSRT with SCR organ masks, contour landmarks and nodule centres (`metadata.csv`, images/, masks/)."""
    del seed
    root = require_dir(spec.path, "jsrt")
    meta = root / "metadata.csv"
    rows = _split(read_csv(meta, ("image", "nodule", "nodule_x", "nodule_y", "nodule_diameter_px")), spec,
                  key=lambda r: r["image"], path=meta)

    def read_row(line, r):
        file, name = root / r["image"], pathlib.Path(r["image"]).stem
        size = header_size(file)
        masks = {s: read_gray(root / "masks" / s / f"{name}.png", None, mask=True)[0]
                 for s in ("left_lung", "right_lung", "heart", "left_clavicle", "right_clavicle")}
        centre = square_coords(heart_centre(masks["heart"]), masks["heart"].shape, image_size)
        if image_size is not None:
            masks = {s: to_square(m, image_size, mask=True)[0] for s, m in masks.items()}
        nodule = parse_number(meta, line, "nodule", r["nodule"], int)
        if nodule not in (0, 1):
            raise DataError(f"{meta}: row {line}: nodule must be 0 or 1, got {r['nodule']!r}")
        box = np.full(4, np.nan, np.float32)
        if nodule:
            x, y, d = (parse_number(meta, line, c, r[c]) for c in ("nodule_x", "nodule_y", "nodule_diameter_px"))
            corners = [[x + 0.5 - d / 2, y + 0.5 - d / 2], [x + 0.5 + d / 2, y + 0.5 + d / 2]]  # Centre → edges.
            box = square_coords(corners, size, image_size, edges=True).reshape(4)
        return {"file": file, "label": nodule, "orig_size": size, "name": r["image"],
                "mask_lungs": masks["left_lung"] | masks["right_lung"], "mask_heart": masks["heart"],
                "mask_left_lung": masks["left_lung"], "mask_right_lung": masks["right_lung"],
                "mask_clavicles": masks["left_clavicle"] | masks["right_clavicle"],
                "landmarks": _jsrt_landmarks(root / "landmarks" / f"{name}.csv", size, image_size), "box": box,
                "heart_centre": centre}

    return collect(rows, read_row, spec=spec, image_size=image_size, where=f"jsrt {spec.split}")


def heart_centre(mask: np.ndarray) -> np.ndarray:
    """(x, y) [1, 2] of LD's chest landmark (the official code's), in the mask's own pixels.

    Column: the heart mask's mean column; row: the mean row of the mask's pixels in that column. NaN for an
    empty mask.
    """
    rows, cols = np.nonzero(mask)
    if not len(cols):
        return np.full((1, 2), np.nan, np.float32)
    x = cols.mean()
    column = cols[np.argmin(np.abs(cols - x))]  # The mean column, or the nearest one the mask reaches.
    return np.array([[x, rows[cols == column].mean()]], np.float32)


def _jsrt_landmarks(path: pathlib.Path, orig_size, image_size: int) -> np.ndarray:
    """[K, 2] contour points in the order of JSRT_STRUCTURES then index; all NaN when the file is absent."""
    counts = {"right_lung": 44, "left_lung": 50, "heart": 26}
    total = sum(counts.values())
    if not path.is_file():
        return np.full((total, 2), np.nan, np.float32)
    points = {s: {} for s in JSRT_STRUCTURES}
    for line, r in enumerate(read_csv(path, ("structure", "index", "x", "y")), start=2):
        if r["structure"] not in points:
            raise DataError(f"{path}: row {line}: unknown structure {r['structure']!r}; expected {JSRT_STRUCTURES}")
        points[r["structure"]][parse_number(path, line, "index", r["index"], int)] = (
            parse_number(path, line, "x", r["x"]), parse_number(path, line, "y", r["y"]))
    for s, n in counts.items():
        if sorted(points[s]) != list(range(n)):
            raise DataError(f"{path}: {s} must have landmarks 0..{n - 1}, got {len(points[s])} points")
    xy = [points[s][i] for s in JSRT_STRUCTURES for i in range(counts[s])]
    return square_coords(xy, orig_size, image_size)


def load_openist(spec, *, image_size: int, seed: int) -> dict[str, np.ndarray]:
    """OpenIST normals with lung masks (`metadata.csv`: image, lung_mask)."""
    del seed
    root = require_dir(spec.path, "openist")
    meta = root / "metadata.csv"
    rows = _split(read_csv(meta, ("image", "lung_mask")), spec, key=lambda r: r["image"], path=meta)

    def read_row(line, r):
        return {"file": root / r["image"], "label": 0, "name": r["image"],
                "mask_lungs": read_gray(root / r["lung_mask"], image_size, mask=True)[0]}

    return collect(rows, read_row, spec=spec, image_size=image_size, where=f"openist {spec.split}")


def load_covid(spec, *, image_size: int, seed: int) -> dict[str, np.ndarray]:
    """COVID-19 image–note pairs; label 0 for 'No Finding', -1 where the finding is unknown, else 1.

    Split by patient, so no patient is in both train and valid. `has_mask` marks images with a lung mask.
    """
    del seed
    root = require_dir(spec.path, "covid")
    meta = root / "metadata.csv"
    rows = _split(read_csv(meta, ("image", "lung_mask", "patient_id", "finding", "clinical_notes")), spec,
                  key=lambda r: r["patient_id"], path=meta)

    def read_row(line, r):
        finding = r["finding"].strip()
        has_mask = bool(r["lung_mask"].strip())
        mask = (read_gray(root / r["lung_mask"], image_size, mask=True)[0] if has_mask
                else blank_mask(image_size))
        return {"file": root / r["image"], "name": r["image"], "patient": r["patient_id"], "mask_lungs": mask,
                "has_mask": has_mask, "label": 0 if finding == "No Finding" else -1 if finding in ("", "todo") else 1,
                "text": r["clinical_notes"]}

    return collect(rows, read_row, spec=spec, image_size=image_size, where=f"covid {spec.split}")


def load_iu_reports(spec, *, image_size: int, seed: int) -> dict[str, np.ndarray]:
    """Indiana University reports (text only): `text` = FINDINGS + IMPRESSION; `report_*` each on its own.

    Reports with neither section are left out; an XML report that does not parse (or is over MAX_REPORT_BYTES)
    is an error, or under `on_error='skip'` left out and counted like a bad image.
    """
    del image_size, seed
    root = require_dir(spec.path, "iu_reports")
    archive = root / "NLMCXR_reports.tgz"
    if not archive.is_file():
        raise DataError(f"{archive}: file is missing (the iu_reports layout is one NLMCXR_reports.tgz)")
    if spec.on_error not in ON_ERROR:
        raise DataError(f"data on_error must be one of {ON_ERROR}; got {spec.on_error!r}")
    reports, skipped = [], []
    try:
        with tarfile.open(archive) as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml")),
                             key=lambda m: m.name)
            for m in members:
                try:
                    if m.size > MAX_REPORT_BYTES:
                        raise DataError(f"{archive}:{m.name}: {m.size} bytes, over MAX_REPORT_BYTES for one report")
                    try:
                        findings, impression = _report_sections(tar.extractfile(m).read())
                    except ET.ParseError as e:
                        raise DataError(f"{archive}:{m.name}: not valid XML ({e})") from e
                except DataError as e:
                    if spec.on_error == "raise":
                        raise
                    skipped.append(str(e))
                    continue
                if findings or impression:
                    reports.append({"name": m.name, "report_findings": findings, "report_impression": impression,
                                    "text": report_text(findings, impression)})
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:  # Corrupt or truncated archives.
        raise DataError(f"{archive}: not a readable .tgz archive ({e})") from e
    if not reports:
        raise DataError(f"{archive}: no report with a FINDINGS or IMPRESSION section"
                        + (f" ({len(skipped)} unreadable; first: {skipped[0]})" if skipped else ""))
    if skipped:
        log.warning("iu_reports: skipped %d of %d reports (on_error='skip'); first: %s", len(skipped),
                    len(skipped) + len(reports), skipped[0])
    keep = _split([{"name": r["name"]} for r in reports], spec, key=lambda r: r["name"], path=archive)
    return Examples({k: np.asarray([reports[line - 2][k] for line, _ in keep], object) for k in reports[0]},
                    skipped)


def _report_sections(xml: bytes) -> tuple[str, str]:
    sections = {"findings": "", "impression": ""}
    for node in ET.fromstring(xml).iter("AbstractText"):
        label = (node.get("Label") or "").lower()
        if label in sections and node.text:
            sections[label] = re.sub(r"\s+", " ", node.text).strip()
    return sections["findings"], sections["impression"]


def _split(rows, spec, *, key, path) -> list[tuple[int, dict]]:
    """(CSV line, row) pairs of `spec.split` (all, train, valid), capped at `spec.num_examples`."""
    if spec.split not in ("all", "train", "valid"):
        raise DataError(f"{path}: split must be all, train or valid for this layout; got {spec.split!r}")
    chosen = [(line, r) for line, r in enumerate(rows, start=2) if in_split(key(r), spec.split)]
    return first(chosen, spec)
