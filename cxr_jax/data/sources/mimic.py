"""MIMIC-CXR-JPG (PhysioNet): images, CheXpert-labeller labels, official split, and the reports' sections.

Layout (as downloaded; CSVs may be gzipped or not):
  mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, subject_id, study_id, ViewPosition, …
  mimic-cxr-2.0.0-chexpert.csv[.gz]   subject_id, study_id and the 14 CheXpert observations (1.0/0.0/-1.0/blank)
  mimic-cxr-2.0.0-split.csv[.gz]      dicom_id, study_id, subject_id, split (train | validate | test)
  files/p10/p10000032/s50414267/<dicom_id>.jpg
Reports (from MIMIC-CXR) are read from `files/pXX/pSUBJECT/sSTUDY.txt` in the same tree or from
`mimic-cxr-reports.zip` beside the CSVs; without them `text` is empty.
"""

from __future__ import annotations

import pathlib
import re
import zipfile
import zlib

import numpy as np

from cxr_jax.data.sources.fileio import DataError, collect, first, read_csv, report_text, require_dir
from cxr_jax.data.sources.public import CHEXPERT_OBSERVATIONS, check_policy, chexpert_label, chexpert_value

SPLITS = {"train": "train", "valid": "validate", "validate": "validate", "test": "test"}
FRONTAL = ("PA", "AP")
# Section headers that hold the findings or the impression (the variants radiologists write).
FINDINGS_HEADERS = ("FINDINGS", "FINDING", "FINDINGS AND IMPRESSION")
IMPRESSION_HEADERS = ("IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS", "SUMMARY")
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z ,&/()-]*?)[ \t]*:", re.MULTILINE)


def report_sections(report: str) -> tuple[str, str]:
    """(FINDINGS, IMPRESSION) of a free-text report, whitespace-normalised.

    A section runs from its upper-case `HEADER:` at the start of a line to the next header. A report with
    neither section gives its last paragraph as the impression (as MIMIC-CXR's own section parser does).
    """
    headers = list(_HEADER.finditer(report))
    sections = {}
    for header, following in zip(headers, headers[1:] + [None]):
        body = report[header.end():following.start() if following else len(report)]
        sections.setdefault(header.group(1).strip(), " ".join(body.split()))
    findings = next((sections[h] for h in FINDINGS_HEADERS if sections.get(h)), "")
    impression = next((sections[h] for h in IMPRESSION_HEADERS if sections.get(h)), "")
    if not (findings or impression):
        paragraphs = [p for p in re.split(r"\n\s*\n", report) if p.strip()]
        impression = " ".join(paragraphs[-1].split()) if paragraphs else ""
    return findings, impression


def load_mimic(spec, *, image_size: int, seed: int) -> dict[str, np.ndarray]:
    """MIMIC-CXR-JPG split `train`, `valid` (= validate) or `test`; `findings` [N, 14] in CheXpert order.

    Also `text` (FINDINGS + IMPRESSION), `report_findings`, `report_impression`, `study_id`, `subject_id`.
    """
    del seed
    root = require_dir(spec.path, "mimic")
    if spec.split not in SPLITS:
        raise DataError(f"mimic split must be one of {sorted(SPLITS)}; got {spec.split!r}")
    check_policy(spec)
    meta_path, split_path, label_path = (_csv(root, name) for name in ("metadata", "split", "chexpert"))
    split_of = {r["dicom_id"]: r["split"] for r in read_csv(split_path, ("dicom_id", "split"))}
    labels = {r["study_id"]: (line, r) for line, r in enumerate(
        read_csv(label_path, ("subject_id", "study_id", *CHEXPERT_OBSERVATIONS)), start=2)}
    rows = [(line, r) for line, r in enumerate(
        read_csv(meta_path, ("dicom_id", "subject_id", "study_id", "ViewPosition")), start=2)
        if split_of.get(r["dicom_id"]) == SPLITS[spec.split]
        and (not spec.frontal_only or r["ViewPosition"] in FRONTAL)]
    rows = first(rows, spec)
    reports = _Reports(root)

    def read_row(line, r):
        subject, study = r["subject_id"], r["study_id"]
        folder = pathlib.Path("files", f"p{subject[:2]}", f"p{subject}")
        findings = [-1] * len(CHEXPERT_OBSERVATIONS)
        if study in labels:
            label_line, label_row = labels[study]
            findings = [chexpert_value(label_path, label_line, c, label_row[c], spec.uncertain)
                        for c in CHEXPERT_OBSERVATIONS]
        sections = report_sections(reports.read(folder / f"s{study}.txt"))
        return {"file": root / folder / f"s{study}" / f"{r['dicom_id']}.jpg", "name": r["dicom_id"],
                "findings": findings, "label": chexpert_label(findings), "study_id": int(study),
                "subject_id": int(subject), "text": report_text(*sections), "report_findings": sections[0],
                "report_impression": sections[1]}

    return collect(rows, read_row, spec=spec, image_size=image_size, where=f"mimic {spec.split}")


def _csv(root: pathlib.Path, name: str) -> pathlib.Path:
    for suffix in (".csv.gz", ".csv"):
        path = root / f"mimic-cxr-2.0.0-{name}{suffix}"
        if path.is_file():
            return path
    raise DataError(f"{root}: missing mimic-cxr-2.0.0-{name}.csv.gz (or .csv)")


class _Reports:
    """Report text by relative path, from the file tree or `mimic-cxr-reports.zip`; '' when neither has it.

    Bytes that are not UTF-8 become U+FFFD (which the tokenizer drops); the rest of the report is kept.
    """

    def __init__(self, root: pathlib.Path):
        self.root = root
        archive = root / "mimic-cxr-reports.zip"
        try:
            self.zip = zipfile.ZipFile(archive) if archive.is_file() else None
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise DataError(f"{archive}: not a readable zip archive ({e})") from e
        self.archive = archive
        self.names = set(self.zip.namelist()) if self.zip else set()

    def read(self, rel: pathlib.Path) -> str:
        path = self.root / rel
        if path.is_file():
            return path.read_text(errors="replace")
        for name in (rel.as_posix(), f"mimic-cxr-reports/{rel.as_posix()}"):
            if name in self.names:
                try:
                    return self.zip.read(name).decode(errors="replace")
                except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
                    raise DataError(f"{self.archive}:{name}: cannot read ({e})") from e
        return ""
