import numpy as np
import pytest

from cxr_jax.data import pipeline, sources
from tests.conftest import data_spec, image_folder

N = 10


def _examples():
    return {"index": np.arange(N, dtype=np.int32), "image": np.arange(N * 4, dtype=np.uint8).reshape(N, 2, 2, 1)}


def _take(steps, *, global_batch=4, start_step=0, rows=(0, 4), seed=3):
    ds, _ = pipeline.train_dataset(_examples(), preprocess=lambda e: e, global_batch=global_batch, seed=seed,
                                start_step=start_step, rows=rows)
    return [b for _, b in zip(range(steps), ds.as_numpy_iterator())]


def test_each_epoch_is_a_permutation():
    batches = _take(5, global_batch=4)  # 20 examples = two epochs of 10.
    order = np.concatenate([b["index"] for b in batches])
    assert sorted(order[:10]) == list(range(N)) and sorted(order[10:]) == list(range(N))
    assert not np.array_equal(order[:10], order[10:])  # A fresh shuffle each epoch.
    assert not np.array_equal(order[:10], np.arange(N))


def test_resuming_at_a_step_continues_the_same_stream():
    full = _take(6)
    resumed = _take(3, start_step=3)
    for a, b in zip(full[3:], resumed):
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["seed"], b["seed"])


def test_hosts_split_each_global_batch_without_overlap():
    whole = _take(4)
    host0 = _take(4, rows=(0, 2))
    host1 = _take(4, rows=(2, 4))
    for w, a, b in zip(whole, host0, host1):
        np.testing.assert_array_equal(w["index"], np.concatenate([a["index"], b["index"]]))
        np.testing.assert_array_equal(w["seed"], np.concatenate([a["seed"], b["seed"]]))


def test_seed_changes_the_order():
    a = np.concatenate([b["index"] for b in _take(3, seed=1)])
    b = np.concatenate([b["index"] for b in _take(3, seed=2)])
    assert not np.array_equal(a, b)


def test_eval_batches_cover_the_set_once_with_padding_masked():
    batches = list(pipeline.eval_batches(_examples(), batch_size=4))
    assert [len(b["index"]) for b in batches] == [4, 4, 4]
    kept = np.concatenate([b["index"][b["mask"] > 0] for b in batches])
    np.testing.assert_array_equal(kept, np.arange(N))


def _stream(examples, steps, *, start_step=0, on_error="raise"):
    ds, reader = pipeline.train_dataset(examples, preprocess=lambda e: e, global_batch=4, seed=1,
                                        start_step=start_step, rows=(0, 4), image_size=8, on_error=on_error)
    return [b for _, b in zip(range(steps), pipeline.as_numpy(ds, reader))], reader


def test_streamed_files_give_the_same_batches_as_memory(tmp_path):
    image_folder(tmp_path)
    memory = sources.load(data_spec("nih1000", tmp_path, "train"), image_size=8, seed=0)
    streamed = sources.load(data_spec("nih1000", tmp_path, "train", stream=True), image_size=8, seed=0)
    assert "image" not in streamed and list(streamed["file"]) == list(memory["file"])
    a = _stream({"image": memory["image"], "label": memory["label"]}, 4)[0]
    b = _stream({"file": streamed["file"], "label": streamed["label"]}, 4)[0]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_streamed_bad_file_raises_its_name_or_is_replaced_in_place(tmp_path):
    image_folder(tmp_path, bad=(3,))
    files = sources.load(data_spec("nih1000", tmp_path, "train", stream=True), image_size=8, seed=0)["file"]
    with pytest.raises(sources.DataError, match=r"3.png: cannot decode image"):
        _stream({"file": files}, 4)
    batches, reader = _stream({"file": files}, 6, on_error="skip")
    values = np.concatenate([b["image"][:, 4, 4, 0] for b in batches])
    assert set(values) == {15 * i + 5 for i in (0, 1, 2, 4, 5)}  # Row 3 shows file 4 instead.
    assert list(reader.bad) == [3] and "3.png" in reader.bad[3]
    resumed, _ = _stream({"file": files}, 3, start_step=3, on_error="skip")
    for x, y in zip(batches[3:], resumed):
        np.testing.assert_array_equal(x["image"], y["image"])  # Positions, hence resumption, unchanged.


def test_streamed_eval_drops_bad_files_and_keeps_rows_aligned(tmp_path):
    image_folder(tmp_path, bad=(1,))
    examples = {"file": sources.load(data_spec("nih1000", tmp_path, "train", stream=True), image_size=8,
                                     seed=0)["file"], "label": np.arange(6)}
    batches = list(pipeline.eval_batches(examples, batch_size=4, image_size=8, on_error="skip"))
    kept = np.concatenate([b["row"][b["mask"] > 0] for b in batches])
    labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
    values = np.concatenate([b["image"][b["mask"] > 0][:, 4, 4, 0] for b in batches])
    np.testing.assert_array_equal(kept, [0, 2, 3, 4, 5])
    np.testing.assert_array_equal(labels, kept)
    np.testing.assert_array_equal(values, 15 * kept + 5)


def _stratified(steps, *, rows=(0, 8), start_step=0, composition=(3, 5)):
    examples = {**_examples(), "stratum": (np.arange(N) >= 2).astype(np.int32)}  # Stratum 0: indices 0 and 1.
    ds, _ = pipeline.train_dataset(examples, preprocess=lambda e: e, global_batch=8, seed=3,
                                   start_step=start_step, rows=rows, composition=composition)
    return [b for _, b in zip(range(steps), ds.as_numpy_iterator())]


def test_a_batch_composition_fixes_the_rows_of_each_stratum():
    batches = _stratified(4)
    assert all("stratum" not in b for b in batches)
    for b in batches:
        assert (b["index"] < 2).sum() == 3  # Exactly 3 of 8 rows from the 2-example stratum in every batch.
        assert (b["index"] < 2)[:4].sum() in (1, 2)  # Interleaved: both halves (two devices) get some.
    rare = np.concatenate([b["index"][b["index"] < 2] for b in batches])
    assert sorted(rare[:2]) == [0, 1] and sorted(rare[2:4]) == [0, 1]  # Each stratum cycles through epochs.
    common = np.concatenate([b["index"][b["index"] >= 2] for b in batches])
    assert sorted(common[:8]) == list(range(2, N))
    seeds = np.concatenate([b["seed"][:, 1] for b in batches])
    np.testing.assert_array_equal(seeds, np.arange(32))  # Augmentation seeds stay the global position.


def test_a_stratified_stream_resumes_and_splits_over_hosts_exactly():
    full = _stratified(5)
    resumed = _stratified(2, start_step=3)
    host0, host1 = _stratified(5, rows=(0, 4)), _stratified(5, rows=(4, 8))
    for a, b in zip(full[3:], resumed):
        np.testing.assert_array_equal(a["index"], b["index"])
    for w, a, b in zip(full, host0, host1):
        np.testing.assert_array_equal(w["index"], np.concatenate([a["index"], b["index"]]))


def test_a_bad_batch_composition_is_explained():
    with pytest.raises(ValueError, match="sum to the global batch 8"):
        _stratified(1, composition=(3, 4))
    with pytest.raises(ValueError, match="no example is in it"):
        _stratified(1, composition=(3, 4, 1))
