"""The sources by name (config `data.*.source`): each one's loader and a one-line description.

Kept apart from the package's `load` so that `cxr_jax.data.tfds_sets`, which `load` calls for prepared sets,
can build from the loaders without importing the package that imports it.
"""

from __future__ import annotations

import numpy as np

from cxr_jax.data import phantom
from cxr_jax.data.sources import mimic, public, rsna, shared
from cxr_jax.data.sources.fileio import DataError


def load_phantom(spec, *, image_size: int, seed: int) -> dict[str, np.ndarray]:
    """The embedded phantom; each split draws from its own seed so train and eval never share images."""
    if spec.num_examples <= 0:
        raise DataError("the phantom source needs data.<split>.num_examples > 0 (how many images to draw)")
    split_seed = {"train": 0, "valid": 1, "test": 2}.get(spec.split)
    if split_seed is None:
        raise DataError(f"phantom split must be train, valid or test; got {spec.split!r}")
    data = phantom.generate(spec.num_examples, image_size=image_size, seed=seed * 3 + split_seed)
    data["orig_size"] = np.full((spec.num_examples, 2), image_size, np.int32)
    return data


# name -> (loader, one-line description for `cxr-jax data list`).
SOURCES = {
    "phantom": (load_phantom, "embedded synthetic CXR phantom with lesion masks (no path)"),
    "nih1000": (shared.load_nih1000, "NIH ChestX-ray14 subset: metadata.csv (split, abnormal) + images/"),
    "jsrt": (shared.load_jsrt, "JSRT: organ masks, 120 contour landmarks, nodule centres"),
    "openist": (shared.load_openist, "OpenIST normals with lung masks"),
    "covid": (shared.load_covid, "COVID-19 collection: images, clinical notes, some lung masks"),
    "iu_reports": (shared.load_iu_reports, "Indiana University report XMLs (text only)"),
    "chexpert": (public.load_chexpert, "CheXpert: train.csv/valid.csv + JPGs (data.*.uncertain policy)"),
    "nih14": (public.load_nih14, "NIH ChestX-ray14: Data_Entry_2017.csv, BBox_List_2017.csv, images/"),
    "mimic": (mimic.load_mimic, "MIMIC-CXR-JPG: metadata/chexpert/split CSVs, files/p*/…jpg, report sections"),
    "rsna": (rsna.load_rsna, "RSNA Pneumonia: DICOMs (VOI LUT, MONOCHROME1), boxes, detailed classes"),
    "folder": (public.load_folder, "any folder with metadata.csv: image[, label, split, text, mask]"),
}
