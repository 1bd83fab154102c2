import numpy as np

from cxr_jax.data import pipeline

N = 10


def _examples():
    return {"index": np.arange(N, dtype=np.int32), "image": np.arange(N * 4, dtype=np.uint8).reshape(N, 2, 2, 1)}


def _take(steps, *, global_batch=4, start_step=0, rows=(0, 4), seed=3):
    ds = pipeline.train_dataset(_examples(), preprocess=lambda e: e, global_batch=global_batch, seed=seed,
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
