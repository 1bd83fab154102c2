"""Category retrieval sets in the CheXpert 8×200 format of ConVIRT (Zhang et al. 2022, §4.3).

Three CSV files, as the ConVIRT authors' script writes them:
  candidates      `Path`, then one column per category: 1 marks a member (CheXpert's 1.0 / 0.0 / -1.0 / blank
                  are accepted; only 1 counts). The paper's set: 8 categories × 200 exclusively positive images.
  image queries   `Variable` (a category column of the candidates), `Path`.
  text queries    `Variable`, `Text`: a sentence describing the category (the paper's were written by a
                  radiologist).
A candidate is relevant to a query when its column for the query's `Variable` is 1. Paths are relative to a
root folder (by default the candidates file's folder; CheXpert's leading 'CheXpert-v1.0…/' also resolves).

`write_set` makes such a set from any labelled source (exclusive positives per finding, plus 'No Finding'),
so the evaluation runs on data at hand; its text queries are plain category names for the user to replace.
"""

from __future__ import annotations

import csv
import pathlib

import numpy as np
from PIL import Image

from cxr_jax.data import phantom
from cxr_jax.data.sources import public
from cxr_jax.data.sources.fileio import DataError, read_csv

NORMAL = "No Finding"
FINDING_NAMES = {  # Source -> names of its `findings` columns.
    "phantom": phantom.FINDINGS,
    "nih1000": public.NIH_FINDINGS,
    "nih14": public.NIH_FINDINGS,
    "chexpert": public.CHEXPERT_OBSERVATIONS,
    "mimic": public.CHEXPERT_OBSERVATIONS,
}


def read_candidates(path: str | pathlib.Path, categories, root: str | None = None) -> dict[str, np.ndarray]:
    """`file` (object [N]) and, per category, `relevant[category]` (bool [N]) from a candidates CSV."""
    path = pathlib.Path(path)
    categories = sorted(set(categories))
    rows = read_csv(path, ("Path", *categories))
    base = pathlib.Path(root) if root else path.parent
    numbered = list(enumerate(rows, start=2))
    files = np.asarray([str(public.listed_file(base, r["Path"], path, line)) for line, r in numbered], object)
    relevant = {c: np.asarray([_member(r[c], path, line, c) for line, r in numbered]) for c in categories}
    return {"file": files, "relevant": relevant}


def read_queries(path: str | pathlib.Path, column: str, root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Categories [Q] and items [Q] of a query CSV: image files (`column='Path'`) or sentences (`'Text'`)."""
    path = pathlib.Path(path)
    rows = read_csv(path, ("Variable", column))
    if not rows:
        raise DataError(f"{path}: no queries")
    base = pathlib.Path(root) if root else path.parent
    items = [str(public.listed_file(base, r[column], path, line)) if column == "Path" else r[column]
             for line, r in enumerate(rows, start=2)]
    return np.asarray([r["Variable"] for r in rows], object), np.asarray(items, object)


def write_set(data: dict[str, np.ndarray], source: str, out: str | pathlib.Path, *, num_queries: int,
              num_candidates: int, seed: int) -> dict[str, int]:
    """Writes candidates.csv, image_queries.csv and text_queries.csv under `out` from a labelled set.

    Categories are 'No Finding' and each finding with at least `num_queries + num_candidates` exclusively
    positive examples (that finding alone); a seeded shuffle picks the queries, then the candidates. In-memory
    images (the phantom) are written as PNGs under `out/images`. Returns each category's candidate count.
    """
    if source not in FINDING_NAMES or "findings" not in data:
        raise DataError(f"data source {source!r} has no per-finding labels; retrieval sets need them "
                        f"(sources with them: {sorted(FINDING_NAMES)})")
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    chosen = {}
    for name, members in exclusive_positives(data, FINDING_NAMES[source]).items():
        if len(members) >= num_queries + num_candidates:
            members = rng.permutation(members)
            chosen[name] = (members[:num_queries], members[num_queries:num_queries + num_candidates])
    if len(chosen) < 2:
        raise DataError(f"fewer than two categories of {source!r} have {num_queries} + {num_candidates} "
                        "exclusively positive examples; lower the query or candidate count")
    names = list(chosen)
    files = _image_files(data, np.concatenate([np.concatenate(pair) for pair in chosen.values()]), out)
    _write_csv(out / "candidates.csv", ["Path", *names],
               [[_relative(files[i], out), *(int(n == name) for n in names)]
                for name in names for i in chosen[name][1]])
    _write_csv(out / "image_queries.csv", ["Variable", "Path"],
               [[name, _relative(files[i], out)] for name in names for i in chosen[name][0]])
    _write_csv(out / "text_queries.csv", ["Variable", "Text"],
               [[name, name.replace("_", " ").capitalize() + "."] for name in names])
    return {name: len(candidates) for name, (_, candidates) in chosen.items()}


def exclusive_positives(data: dict[str, np.ndarray], names) -> dict[str, np.ndarray]:
    """Row indices per category: rows whose only positive finding is that one; 'No Finding': none positive."""
    positive = data["findings"] == 1
    alone = positive.sum(axis=1) == 1
    result = {}
    if NORMAL not in names:
        normal = ~positive.any(axis=1) & (data["label"] == 0 if "label" in data else True)
        result[NORMAL] = np.flatnonzero(normal)
    for k, name in enumerate(names):
        result[name] = np.flatnonzero(alone & positive[:, k])
    return result


def _image_files(data: dict[str, np.ndarray], rows: np.ndarray, out: pathlib.Path) -> dict[int, pathlib.Path]:
    """The file of each row; in-memory images are written to `out/images/ROW.png` first."""
    if "file" in data:
        return {i: pathlib.Path(data["file"][i]) for i in rows}
    (out / "images").mkdir(exist_ok=True)
    files = {i: out / "images" / f"{i:05d}.png" for i in rows}
    for i, file in files.items():
        Image.fromarray(data["image"][i][..., 0]).save(file)
    return files


def _relative(file: pathlib.Path, out: pathlib.Path) -> str:
    try:
        return file.resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        return str(file.resolve())


def _write_csv(path: pathlib.Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _member(text: str, path: pathlib.Path, line: int, column: str) -> bool:
    text = text.strip()
    if text in ("", "0", "0.0", "-1", "-1.0"):
        return False
    if text in ("1", "1.0"):
        return True
    raise DataError(f"{path}: row {line}: {column} must be 1, 0, -1 or blank, got {text!r}")
