"""TFDS datasets (`cxr-jax data prepare`, `data.*.tfds_data_dir`): built from fixtures in the jsrt and folder
layouts, read back as the loaders' own arrays (bit for bit, in memory and streamed), and an input stream from them
that resumes exactly and splits over hosts as one read from files."""

import numpy as np
import pytest
from PIL import Image

from cxr_jax.cli.main import main
from cxr_jax.data import pipeline, sources
from tests.conftest import data_spec, shared_dir

SIDES = [(20, 14), (14, 22), (24, 24), (17, 30), (26, 19), (12, 12)]  # (h, w): padding both ways, up and down.


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _write_jsrt(root, rng):
    """Six images of their own sizes with random pixels and masks, landmarks for all but one, two nodules."""
    rows = ["image,nodule,nodule_x,nodule_y,nodule_diameter_px"]
    counts = (("right_lung", 44), ("left_lung", 50), ("heart", 26))
    for i, (h, w) in enumerate(SIDES):
        name = f"J{i}"
        _png(root / "images" / f"{name}.png", rng.integers(0, 256, (h, w), dtype=np.uint8))
        for s in ("left_lung", "right_lung", "heart", "left_clavicle", "right_clavicle"):
            _png(root / "masks" / s / f"{name}.png", (rng.random((h, w)) < 0.3).astype(np.uint8) * 255)
        if i != 3:
            lines = ["structure,index,x,y"] + [f"{s},{k},{rng.uniform(0, w - 1):.3f},{rng.uniform(0, h - 1):.3f}"
                                               for s, n in counts for k in range(n)]
            (root / "landmarks").mkdir(exist_ok=True)
            (root / "landmarks" / f"{name}.csv").write_text("\n".join(lines) + "\n")
        rows.append(f"images/{name}.png,1,{w / 2:.1f},{h / 3:.1f},5.5" if i in (1, 4) else f"images/{name}.png,0,,,")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")


def _write_folder(root, rng):
    """Colour, 16-bit and 8-bit images (stored as their decoded 8-bit gray), labels, text, some masks, a split."""
    lines = ["image,label,split,text,mask"]
    for i, (h, w) in enumerate(SIDES):
        if i == 0:
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        elif i == 1:
            image = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
        else:
            image = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
        (root / "x").mkdir(parents=True, exist_ok=True)
        image.save(root / "x" / f"{i}.png")
        mask = f"m/{i}.png" if i % 2 else ""
        if mask:
            _png(root / mask, (rng.random((h, w)) < 0.5).astype(np.uint8) * 255)
        lines.append(f"x/{i}.png,{'' if i == 2 else i % 2},{'valid' if i == 5 else 'train'},note {i},{mask}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


def _assert_same(memory, prepared):
    """The arrays of `sources.load` from files and from a prepared set: equal keys, dtypes and values."""
    assert sorted(memory) == sorted(prepared)
    for key in memory:
        if key == "file":  # The source's file, or the record it was stored in.
            continue
        a, b = memory[key], prepared[key]
        assert (a.dtype, a.shape) == (b.dtype, b.shape), key
        np.testing.assert_array_equal(a, b, err_msg=key)
    assert all(f.startswith("tfds:") for f in prepared["file"])


def test_prepared_jsrt_reads_back_the_loaders_arrays(tmp_path, capsys):
    rng = np.random.default_rng(0)
    _write_jsrt(tmp_path / "jsrt", rng)
    root, data_dir = tmp_path / "jsrt", tmp_path / "tfds"
    assert main(["data", "prepare", "jsrt", "--path", str(root), "--data-dir", str(data_dir)]) == 0
    assert (data_dir / "cxr_jsrt" / "1.0.0" / "features.json").is_file()
    assert list((data_dir / "cxr_jsrt" / "1.0.0").glob("cxr_jsrt-train.array_record-*"))
    for split in ("all", "train", "valid"):
        for size in (16, 40):  # Down and up.
            memory = sources.load(data_spec("jsrt", root, split), image_size=size, seed=0)
            prepared = sources.load(data_spec("jsrt", None, split, tfds_data_dir=str(data_dir)), image_size=size,
                                    seed=0)
            _assert_same(memory, prepared)
    assert len(memory["name"]) and np.isnan(memory["landmarks"]).all(axis=(1, 2)).any()  # One without landmarks.
    # Streamed: the images stay in the records and decode, in the pipeline's own reader, to the same squares.
    streamed = sources.load(data_spec("jsrt", None, "all", tfds_data_dir=str(data_dir), stream=True),
                            image_size=40, seed=0)
    memory = sources.load(data_spec("jsrt", root, "all"), image_size=40, seed=0)
    assert "image" not in streamed
    np.testing.assert_array_equal(np.stack([sources.read_gray(f, 40)[0] for f in streamed["file"]]),
                                  memory["image"][..., 0])
    _assert_same({k: v for k, v in memory.items() if k != "image"}, {**streamed, "file": streamed["file"]})
    # The first examples only, as num_examples caps a loader.
    capped = sources.load(data_spec("jsrt", None, "all", tfds_data_dir=str(data_dir), num_examples=2),
                          image_size=16, seed=0)
    assert list(capped["name"]) == list(memory["name"][:2])
    # With sample_seed, the cap draws its rows with that seed, the same from the folder and from the records.
    drawn = [sources.load(data_spec("jsrt", path, "all", tfds_data_dir=dd, num_examples=3, sample_seed=seed),
                          image_size=16, seed=0)["name"].tolist()
             for seed in (0, 1) for path, dd in ((root, None), (None, str(data_dir)))]
    assert drawn[0] == drawn[1] and drawn[2] == drawn[3] and drawn[0] != drawn[2]
    assert all(set(d) <= set(memory["name"]) and len(set(d)) == 3 for d in drawn)
    with pytest.raises(SystemExit, match="2"):
        main(["data", "prepare", "jsrt", "--path", str(root), "--data-dir", str(data_dir)])
    assert "cxr_jsrt/1.0.0 exists; remove it to prepare jsrt again" in capsys.readouterr().err
    with pytest.raises(sources.DataError, match="no prepared folder set"):
        sources.load(data_spec("folder", None, "all", tfds_data_dir=str(data_dir)), image_size=16, seed=0)


def test_prepared_folder_and_its_stream_resume_exactly(tmp_path):
    rng = np.random.default_rng(1)
    root, data_dir = tmp_path / "folder", tmp_path / "tfds"
    _write_folder(root, rng)
    assert main(["data", "prepare", "folder", "--path", str(root), "--data-dir", str(data_dir)]) == 0
    for split in ("all", "train", "valid"):
        _assert_same(sources.load(data_spec("folder", root, split), image_size=24, seed=0),
                     sources.load(data_spec("folder", None, split, tfds_data_dir=str(data_dir)), image_size=24,
                                  seed=0))
    with pytest.raises(sources.DataError, match=r"no split 'test'; prepared: \['all', 'train', 'valid'\]"):
        sources.load(data_spec("folder", None, "test", tfds_data_dir=str(data_dir)), image_size=24, seed=0)

    # The input stream: from files in memory, from the prepared set in memory and streamed from its records.
    memory = sources.load(data_spec("folder", root, "train"), image_size=8, seed=0)
    prepared = sources.load(data_spec("folder", None, "train", tfds_data_dir=str(data_dir)), image_size=8, seed=0)
    streamed = sources.load(data_spec("folder", None, "train", tfds_data_dir=str(data_dir), stream=True),
                            image_size=8, seed=0)

    def batches(data, steps, *, start_step=0, rows=(0, 4)):
        key = "image" if "image" in data else "file"
        ds, reader = pipeline.train_dataset({key: data[key], "label": data["label"]}, preprocess=lambda e: e,
                                            global_batch=4, seed=5, start_step=start_step, rows=rows, image_size=8)
        return [b for _, b in zip(range(steps), pipeline.as_numpy(ds, reader))]

    def assert_equal(xs, ys):
        assert len(xs) == len(ys)
        for x, y in zip(xs, ys):
            assert sorted(x) == sorted(y)
            for key in x:
                np.testing.assert_array_equal(x[key], y[key], err_msg=key)

    reference = batches(memory, 6)  # Five training images: the epochs wrap inside these six steps.
    assert_equal(batches(prepared, 6), reference)
    assert_equal(batches(streamed, 6), reference)
    assert_equal(batches(streamed, 2, start_step=4), reference[4:])  # A restart at step 4.
    host0, host1 = batches(streamed, 6, rows=(0, 2)), batches(streamed, 6, rows=(2, 4))
    assert_equal([{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(host0, host1)], reference)


def test_prepared_options_are_checked_when_read(tmp_path):
    """CheXpert-style labels depend on the uncertain policy and view filter, which a prepared set fixes."""
    rng = np.random.default_rng(2)
    root = tmp_path / "CheXpert-v1.0-small"
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(sources.public.CHEXPERT_OBSERVATIONS)
    cells = ",".join(["", "-1.0", "1.0"] + [""] * 11)
    rows = [f"CheXpert-v1.0-small/train/p{i}/s1/view1_{'lateral' if i == 2 else 'frontal'}.jpg,F,50,"
            f"{'Lateral' if i == 2 else 'Frontal'},PA,{cells}" for i in range(3)]
    root.mkdir()
    (root / "train.csv").write_text("\n".join([header, *rows]) + "\n")
    for i in range(3):
        _png(tmp_path / f"CheXpert-v1.0-small/train/p{i}/s1/view1_{'lateral' if i == 2 else 'frontal'}.jpg",
             rng.integers(0, 256, SIDES[i], dtype=np.uint8))
    data_dir = tmp_path / "tfds"
    assert main(["data", "prepare", "chexpert", "--path", str(root), "--data-dir", str(data_dir), "--split", "train",
                 "--uncertain", "ones", "--all-views"]) == 0
    options = dict(uncertain="ones", frontal_only=False)
    _assert_same(sources.load(data_spec("chexpert", root, "train", **options), image_size=16, seed=0),
                 sources.load(data_spec("chexpert", None, "train", tfds_data_dir=str(data_dir), **options),
                              image_size=16, seed=0))
    with pytest.raises(sources.DataError, match="prepared with uncertain='ones', but data.*.uncertain is 'zeros'"):
        sources.load(data_spec("chexpert", None, "train", tfds_data_dir=str(data_dir), frontal_only=False),
                     image_size=16, seed=0)


def test_shared_jsrt_prepared_reads_back_the_loaders_arrays(tmp_path):
    root = shared_dir("jsrt")
    data_dir = tmp_path / "tfds"
    assert main(["data", "prepare", "jsrt", "--path", str(root), "--data-dir", str(data_dir), "--split", "valid"]) == 0
    _assert_same(sources.load(data_spec("jsrt", root, "valid"), image_size=64, seed=0),
                 sources.load(data_spec("jsrt", None, "valid", tfds_data_dir=str(data_dir)), image_size=64, seed=0))
