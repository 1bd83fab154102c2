"""TFDS datasets of the data sources: prepared once (`cxr-jax data prepare`), read with `tfds.data_source`.

`prepare(spec, data_dir)` builds `DATA_DIR/cxr_<source>/1.0.0/` (ArrayRecord files, random access) from a
directory in the source's layout, the builder's `manual_dir` (nothing is downloaded). Every split is built by the
source's own loader (`cxr_jax.data.sources`), so its parsing and validation, its rows and their order are those
of `data.*.path`. The loader runs at original resolution (`fileio.collect` with `image_size=None`): each example
keeps its image as a lossless PNG of the decoded 8-bit pixels at their own size, masks as 0/255 PNGs, landmarks,
heart centres and boxes in original pixels, and the rest as the loader gives it.

`load(spec)` (a spec with `tfds_data_dir`) reads split `spec.split` back and applies the loader's own last
steps (`fileio.to_square`, `square_coords`, `resize_boxes`, `_stack`) at the run's image size, so the arrays
equal the in-memory loader's bit for bit, and the input stream (`pipeline.train_dataset`: a function of the
seed, the step and the row order) is the same one; so is resumption. With `spec.stream` the images stay in the
records: each example's `file` is a record reference (`tfds:NAME:SPLIT:INDEX:DATA_DIR`) that `fileio.decode`
reads through `tfds.data_source` inside tf.data, so each host decodes only the rows of its batches.

Splits are the loader's (`DEFAULT_SPLITS`, or `--split`); nih1000's patient-grouped splits (`patient_split`) are
stored as `train_by_patient` / `valid_by_patient`. CheXpert and MIMIC labels are stored under the `uncertain`
and `frontal_only` options of the prepare; reading with others is an error. TFDS's own `chexpert` builder is not
used: it writes records in an order hashed from their paths (the loader's CSV order, which fixes the input
stream, would be lost), maps only the label strings '1.0', '0.0', '-1.0' and '' and stores the JPEGs for
3-channel decoding; this builder reads the same `train.csv`/`valid.csv` layout through the CheXpert loader.

tensorflow_datasets is imported here only: the data layer imports this module when a spec names a
`tfds_data_dir` or a record is read.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pathlib
import tempfile
import threading
import types

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from cxr_jax.data.sources import fileio, public
from cxr_jax.data.sources.catalog import SOURCES
from cxr_jax.data.sources.fileio import RECORD_PREFIX, DataError, Examples

try:  # TF must never take an accelerator from JAX (as in pipeline.py).
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:
    pass

log = logging.getLogger("cxr_jax.data")

VERSION = "1.0.0"
FILE_FORMAT = "array_record"
META_FILE = "cxr_jax.json"  # Beside dataset_info.json: the source, its prepare options and skipped examples.
DEFAULT_SPLITS = {
    "nih1000": ("all", "train", "valid", "train_by_patient", "valid_by_patient"),
    "jsrt": ("all", "train", "valid"),
    "openist": ("all", "train", "valid"),
    "covid": ("all", "train", "valid"),
    "iu_reports": ("all", "train", "valid"),
    "chexpert": ("train", "valid"),
    "nih14": ("train", "test"),
    "mimic": ("train", "valid", "test"),
    "rsna": ("train", "valid", "test"),
    "folder": None,  # 'all' and the values of its `split` column, or train and valid (`_folder_splits`).
}
# Spec options that change a source's examples: fixed when it is prepared, checked when it is read.
OPTIONS = {"chexpert": ("uncertain", "frontal_only"), "mimic": ("uncertain", "frontal_only")}
TEXT_KEYS = ("name", "patient", "text", "report_findings", "report_impression")
PATIENT_SUFFIX = "_by_patient"
STORED_SPLITS = {"all": "full"}  # TFDS reserves the name 'all' (every split together).


def builder_name(source: str) -> str:
    """The TFDS name of a source's dataset (prefixed: TFDS has its own `chexpert`)."""
    return f"cxr_{source}"


# --- Prepare -----------------------------------------------------------------------------------------------------


def prepare(spec, data_dir: str, splits=None) -> tuple[epath.Path, dict[str, int]]:
    """Builds the TFDS dataset of `spec.source` at `spec.path` in `data_dir`; returns its directory and sizes.

    `splits` (default `DEFAULT_SPLITS`) are built each by the source's loader; an empty one is left out.
    `spec.on_error`, `uncertain` and `frontal_only` apply as when loading. An existing dataset is an error.
    """
    if spec.source not in SOURCES or spec.source == "phantom":
        raise DataError(f"cannot prepare {spec.source!r}: expected one of "
                        f"{sorted(s for s in SOURCES if s != 'phantom')} (the phantom is generated, not read)")
    root = fileio.require_dir(spec.path, spec.source)
    splits = list(splits or DEFAULT_SPLITS[spec.source] or _folder_splits(root))
    target = epath.Path(data_dir) / builder_name(spec.source) / VERSION
    if target.exists():
        raise DataError(f"{target} exists; remove it to prepare {spec.source} again")
    builder = BUILDERS[spec.source](spec=spec, splits=splits, data_dir=data_dir, file_format=FILE_FORMAT)
    config = tfds.download.DownloadConfig(manual_dir=str(root), try_download_gcs=False,
                                          compute_stats=tfds.download.ComputeStatsMode.SKIP)
    with tempfile.TemporaryDirectory() as downloads:  # Stays empty; TFDS would leave it in data_dir.
        builder.download_and_prepare(download_dir=downloads, download_config=config)
    meta = {"source": spec.source, "path": str(root.resolve()), "splits": builder.sizes,
            "options": {k: spec[k] for k in OPTIONS.get(spec.source, ())}, "skipped": builder.skipped}
    (target / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return target, builder.sizes


def _folder_splits(root: pathlib.Path) -> list[str]:
    rows = fileio.read_csv(root / "metadata.csv", ("image",))
    if rows and "split" in rows[0]:
        return ["all", *sorted({r["split"] for r in rows} - {"all"})]
    return ["all", "train", "valid"]


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A source's examples, split by split, as its loader gives them at original resolution (module docstring)."""

    RELEASE_NOTES = {VERSION: "Examples of the cxr_jax loader at original resolution; PNG images and masks."}
    VERSION = tfds.core.Version(VERSION)  # After RELEASE_NOTES, whose key is the string.
    SOURCE = ""
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("The manual_dir is a directory in the source's layout (README, Data); "
                                    "`cxr-jax data prepare SOURCE --path DIR --data-dir D` builds from it.")

    def __init__(self, *, spec, splits, **kwargs):
        self._spec = spec
        self._examples, self.skipped, self.sizes = {}, {}, {}
        for split in splits:  # Each loader parses its tables now: a layout error stops before anything is written.
            examples = _original_examples(spec, split)
            iterator = iter(examples)
            head = next(iterator, None)
            self.skipped[split] = examples.skipped
            if head is None:
                log.warning("%s: split %r is empty; left out", spec.source, split)
                continue
            self._examples[split] = (head, iterator)
        if not self._examples:
            raise DataError(f"{spec.path}: no examples in any of the splits {splits} of {spec.source}")
        head = next(iter(self._examples.values()))[0]
        self._keys = sorted(k for k in head if k != "file")
        self._features = {k: _feature(k, head[k]) for k in self._keys}
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """None: no download checksums beside the code (TFDS's lookup needs `importlib_resources` when editable)."""
        return None

    def _log_download_bytes(self) -> None:  # TFDS prints "Downloading …" sizes; nothing is downloaded here.
        pass

    def _log_download_done(self) -> None:  # The caller says what was written.
        pass

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=f"{self.SOURCE}: {SOURCES[self.SOURCE][1]} (cxr_jax loader, original "
            "resolution)", features=tfds.features.FeaturesDict(self._features), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        manual = pathlib.Path(dl_manager.manual_dir).resolve()
        if manual != pathlib.Path(self._spec.path).resolve():
            raise DataError(f"manual_dir {manual} is not the loaded layout {self._spec.path}")
        return {stored_split(split): self._generate_examples(split) for split in self._examples}

    def _generate_examples(self, split):
        head, rest = self._examples[split]
        index = -1
        for index, example in enumerate(_chain(head, rest)):
            keys = sorted(k for k in example if k != "file")
            if keys != self._keys:
                raise DataError(f"{self.SOURCE} {split}: example {index} has fields {keys}, the first {self._keys}")
            yield index, {k: _encode(k, example[k]) for k in self._keys}
        self.sizes[split] = index + 1


def _chain(head, rest):
    yield head
    yield from rest


def _original_examples(spec, split: str):
    """The loader's examples of `split` at original resolution (`fileio.Originals`, or iu_reports' arrays)."""
    spec = spec.copy_and_resolve_references()
    spec.split, spec.num_examples, spec.stream = split, 0, False
    spec.patient_split = split.endswith(PATIENT_SUFFIX)
    if spec.patient_split:
        if spec.source != "nih1000":
            raise DataError(f"split {split!r}: only nih1000 has patient-grouped splits")
        spec.split = split.removesuffix(PATIENT_SUFFIX)
    examples = SOURCES[spec.source][0](spec, image_size=None, seed=0)
    if isinstance(examples, fileio.Originals):
        return examples
    rows = [dict(zip(examples, values)) for values in zip(*examples.values())]  # Text only (iu_reports).
    return fileio.Originals(iter(rows), examples.skipped)


def _feature(key: str, value):
    """The TFDS feature that stores field `key` of a loader's example."""
    f = tfds.features
    if key == "image" or key.startswith("mask_"):
        return f.Image(shape=(None, None, 1), encoding_format="png")
    if key in TEXT_KEYS:
        return f.Text()
    kinds = {"label": ((), np.int32), "has_mask": ((), np.bool_), "study_id": ((), np.int64),
             "subject_id": ((), np.int64), "orig_size": ((2,), np.int32), "findings": (np.shape(value), np.int32),
             "landmarks": (np.shape(value), np.float32), "heart_centre": ((1, 2), np.float32),
             "box": ((4,), np.float32), "boxes": ((None, 4), np.float32)}
    if key not in kinds:
        raise DataError(f"no TFDS feature for the field {key!r} (add it to tfds_sets._feature)")
    shape, dtype = kinds[key]
    return f.Scalar(dtype=dtype) if shape == () else f.Tensor(shape=shape, dtype=dtype)


def _encode(key: str, value):
    if key == "image" or key.startswith("mask_"):
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(value, np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()
    if key in TEXT_KEYS:
        return str(value)
    if key == "boxes":  # Without the loader's NaN padding: readers pad to their own rows' most.
        boxes = np.asarray(value, np.float32)
        return boxes[~np.isnan(boxes).all(axis=1)]
    return value


# --- Read --------------------------------------------------------------------------------------------------------


def load(spec, *, image_size: int, seed: int) -> Examples:
    """Split `spec.split` of the set prepared in `spec.tfds_data_dir`: the arrays `sources.load` gives from files."""
    del seed
    data_dir, name = str(spec.tfds_data_dir), builder_name(spec.source)
    split = split_name(spec)
    stored = stored_split(split)
    meta = _meta(data_dir, name)
    for key, value in meta["options"].items():
        if spec[key] != value:
            raise DataError(f"{data_dir}/{name} was prepared with {key}={value!r}, but data.*.{key} is "
                            f"{spec[key]!r}; prepare it again with that option (or change the config)")
    source = _source(data_dir, name, stored)
    chosen = fileio.chosen_indices(len(source), spec)
    prefix = f"{RECORD_PREFIX}{name}:{stored}:"
    examples = []
    for start in range(0, len(chosen), 256):  # In chunks: a chunk's PNG bytes are dropped once decoded (or unread).
        indices = chosen[start:start + 256]
        examples += [_example(record, image_size, stream=spec.stream, ref=f"{prefix}{i}:{_absolute(data_dir)}")
                     for i, record in zip(indices, source.__getitems__(indices))]
    if examples and "boxes" in examples[0]:  # Padded as the loader pads: to the most boxes of the rows read.
        most = max([len(e["boxes"]) for e in examples] + [1])
        for e in examples:
            e["boxes"] = public.resize_boxes(list(e["boxes"]), most, tuple(e["orig_size"]), image_size)
            e["box"] = public.union(e["boxes"])
    return Examples(fileio._stack(examples), meta["skipped"].get(split, []))


def split_name(spec) -> str:
    """The stored split that `spec` reads (nih1000 with patient_split: `<split>_by_patient`)."""
    if spec.source == "nih1000" and spec.patient_split and spec.split != "all":
        return spec.split + PATIENT_SUFFIX
    if spec.source == "mimic" and spec.split == "validate":
        return "valid"
    return spec.split


def stored_split(split: str) -> str:
    """The TFDS name of a split."""
    return STORED_SPLITS.get(split, split)


def _meta(data_dir: str, name: str) -> dict:
    path = epath.Path(data_dir) / name / VERSION / META_FILE
    if not path.is_file():
        source = name.removeprefix("cxr_")
        raise DataError(f"{path.parent}: no prepared {source} set (run `cxr-jax data prepare {source} --path DIR "
                        f"--data-dir {data_dir}`)")
    return json.loads(path.read_text())


def _example(record: dict, image_size: int, *, stream: bool, ref: str) -> dict:
    """One stored example at `image_size`: the loader's last steps on its original-resolution fields.

    `boxes` stay as stored: `load` pads and resizes them once it knows the most boxes of the rows read.
    """
    size = tuple(int(v) for v in record["orig_size"]) if "orig_size" in record else None
    example = {}
    for key, value in record.items():
        if key == "image":
            if not stream:
                example[key] = fileio.to_square(_png(value, ref), image_size)[0]
        elif key.startswith("mask_"):
            example[key] = fileio.to_square(_png(value, ref), image_size, mask=True)[0]
        elif key in TEXT_KEYS:
            example[key] = value.decode() if isinstance(value, bytes) else str(value)
        elif key in ("landmarks", "heart_centre"):
            example[key] = fileio.square_coords(value, size, image_size)
        elif key == "box":
            example[key] = fileio.square_coords(np.reshape(value, (2, 2)), size, image_size, edges=True).reshape(4)
        else:
            example[key] = value
    if "image" in record:
        example["file"] = ref
    return example


def _png(data: bytes, ref: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            array = np.asarray(im)
    except Exception as e:  # PIL raises several types for corrupt data.
        raise DataError(f"{ref}: the stored PNG does not decode ({e})") from e
    if array.dtype != np.uint8 or array.ndim != 2:
        raise DataError(f"{ref}: expected an 8-bit grayscale PNG, got {array.dtype} {array.shape}")
    return array


def read_image(ref: str) -> np.ndarray:
    """The uint8 [H, W] image of a record reference (an example's `file`), as `fileio.decode` gives a file's."""
    try:
        name, split, index, data_dir = ref.removeprefix(RECORD_PREFIX).split(":", 3)
        record = _source(data_dir, name, split)[int(index)]
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{ref}: cannot read the prepared record ({e})") from e
    return _png(record["image"], ref)


fileio.register_record_reader(read_image)

_SOURCES: dict[tuple[str, str, str], object] = {}
_LOCK = threading.Lock()


def _source(data_dir: str, name: str, split: str):
    """`tfds.data_source` of a split (images and masks left as PNG bytes), opened once per process."""
    key = (data_dir, name, split)
    with _LOCK:
        if key not in _SOURCES:
            _meta(data_dir, name)
            builder = tfds.builder(name, data_dir=data_dir)
            if split not in builder.info.splits:
                names = {v: k for k, v in STORED_SPLITS.items()}
                raise DataError(f"{builder.data_dir}: no split {names.get(split, split)!r}; prepared: "
                                f"{sorted(names.get(s, s) for s in builder.info.splits)} (`cxr-jax data prepare "
                                "--split` chooses them)")
            images = [k for k, f in builder.info.features.items() if isinstance(f, tfds.features.Image)]
            _SOURCES[key] = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                                             decoders={k: tfds.decode.SkipDecoding() for k in images})
        return _SOURCES[key]


def _absolute(data_dir: str) -> str:
    return data_dir if "://" in data_dir else os.path.abspath(data_dir)


BUILDERS = {source: types.new_class(f"Cxr{source.title().replace('_', '')}", (_Builder,),
                                    {"skip_registration": True},
                                    lambda ns, source=source: ns.update(name=builder_name(source), SOURCE=source,
                                                                         __module__=__name__))
            for source in DEFAULT_SPLITS}
