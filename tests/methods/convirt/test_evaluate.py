"""ConVIRT's retrieval and probe metrics against brute-force definitions, and the evaluator end to end."""

import itertools
import json
import types

import numpy as np
import pytest

from cxr_jax.cli import main
from cxr_jax.methods.convirt import evaluate as convirt
from tests.conftest import ROOT, run_cli

SMOKE = f"{ROOT / 'configs' / 'convirt.py'}:smoke"


def test_recall_at_k_counts_identical_reports_as_hits():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.1, 0.8], [0.3, 0.7, 0.4]])
    eye = np.eye(3, dtype=bool)
    assert convirt.recall_at_k(scores, eye, 1) == 1 / 3  # Only query 0 ranks its own first.
    assert convirt.recall_at_k(scores, eye, 2) == 2 / 3  # Query 1's top two are [2, 0]; query 2's [1, 2].
    same = eye.copy()
    same[1, 2] = same[2, 1] = True  # Reports 1 and 2 are the same string.
    assert convirt.recall_at_k(scores, same, 1) == 1.0  # Queries 1 and 2 each rank the other's copy first.


def test_chance_recall_matches_enumerating_every_ranking():
    relevant = np.array([[1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 1, 1], [0, 0, 0, 1, 1]], bool)
    for k in (1, 2, 3):
        hits = [np.mean([relevant[q, list(order[:k])].any() for q in range(5)])
                for order in itertools.permutations(range(5))]
        np.testing.assert_allclose(convirt.chance_recall_at_k(relevant, k), np.mean(hits), rtol=1e-12)


def test_precision_at_k_is_the_relevant_fraction_of_the_top_k():
    scores = np.array([[0.9, 0.1, 0.5, 0.7], [0.2, 0.1, 0.8, 0.3]])
    relevant = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], bool)
    # Query 0 ranks [0, 3, 2, 1]: top-2 holds one of its two; query 1 ranks [2, 3, 0, 1]: both.
    assert convirt.precision_at_k(scores, relevant, 2) == (1 / 2 + 2 / 2) / 2
    assert convirt.precision_at_k(scores, relevant, 1) == 1.0
    assert convirt.precision_at_k(scores, relevant, 4) == 0.5


def test_reports_are_embedded_in_the_unit_the_model_trained_on(monkeypatch):
    vectors = {"Heart size is normal.": [3.0, 0.0], "Small left effusion.": [0.0, 0.5],
               "Heart size is normal. Small left effusion.": [7.0, 7.0]}
    seen = []

    def fake_embed_texts(method, state, mesh, texts):
        seen.append(list(texts))
        return np.array([vectors[t] for t in texts])

    monkeypatch.setattr(convirt, "embed_texts", fake_embed_texts)
    report = "FINDINGS: Heart size is normal. IMPRESSION: Small left effusion."
    method = types.SimpleNamespace(config=types.SimpleNamespace(
        text=types.SimpleNamespace(unit="sentence", max_sentences=16)))
    # Each sentence at unit length, then averaged: (1, 0) and (0, 1).
    np.testing.assert_allclose(convirt.embed_reports(method, None, None, [report]), [[0.5, 0.5]])
    assert seen[-1] == ["Heart size is normal.", "Small left effusion."]
    method.config.text.unit = "report"  # Whole, headers removed.
    np.testing.assert_allclose(convirt.embed_reports(method, None, None, [report]), [[7.0, 7.0]])
    assert seen[-1] == ["Heart size is normal. Small left effusion."]


def test_retrieval_figure_queries_are_distinct_reports_abnormal_first():
    reports = ["normal.", "effusion.", "normal.", "effusion.", "mass.", "cardiomegaly."]
    labels = np.array([0, 1, 0, 1, 1, 1])
    chosen = convirt._figure_queries(reports, labels)
    assert [reports[i] for i in chosen] == ["effusion.", "mass.", "cardiomegaly."]
    assert [reports[i] for i in convirt._figure_queries(reports[:3], labels[:3])] == ["effusion.", "normal."]


def test_labelled_subset_is_seeded_stratified_and_nonempty_per_class():
    labels = np.array([0] * 90 + [1] * 10)
    small = convirt.labelled_subset(labels, 0.01, seed=0)
    assert sorted(labels[small]) == [0, 1]  # 1% of 90 rounds to 1, of 10 to 0 → kept at 1.
    ten = convirt.labelled_subset(labels, 0.1, seed=3)
    assert np.bincount(labels[ten]).tolist() == [9, 1]
    np.testing.assert_array_equal(ten, convirt.labelled_subset(labels, 0.1, seed=3))
    assert not np.array_equal(ten, convirt.labelled_subset(labels, 0.1, seed=4))
    assert len(convirt.labelled_subset(labels, 1.0, seed=0)) == 100


@pytest.mark.slow  # ~71 s; cheaper: the in-process probe and retrieval tests.
def test_train_and_evaluate_from_the_cli(tmp_path, capsys):
    # In-process CLI calls (the subprocess tests elsewhere cover the entry point itself).
    assert main.main(["train", "--config", SMOKE, "--workdir", str(tmp_path),
                      "--config.train.grad_cache_chunks=2"]) == 0
    sets = tmp_path / "8x200"
    assert main.main(["data", "retrieval-set", "phantom", "--split", "test", "--num-examples", "200", "--image-size",
                      "32", "--queries", "2", "--candidates", "6", "--out", str(sets)]) == 0
    assert main.main(["evaluate", "--config", SMOKE, "--workdir", str(tmp_path), *(
        f"--config.retrieval.{key}={sets / name}.csv"
        for key, name in (("candidates", "candidates"), ("image_queries", "image_queries"),
                          ("text_queries", "text_queries")))]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    categories = len(np.unique(np.loadtxt(sets / "image_queries.csv", str, delimiter=",", skiprows=1)[:, 0]))
    assert metrics["num_candidates"] == 6 * categories
    for prefix, way in itertools.product(("", "random_"), ("i2i", "t2i")):
        assert metrics[f"{prefix}chance_{way}_precision"] == 1 / categories  # Exclusive, balanced categories.
        assert 0 <= metrics[f"{prefix}{way}_precision_at_5"] <= 1 and f"{way}_precision_at_50" not in metrics
        assert (metrics[f"{prefix}{way}_precision_at_10_ci_low"] <= metrics[f"{prefix}{way}_precision_at_10"]
                <= metrics[f"{prefix}{way}_precision_at_10_ci_high"])
    for k in (1, 5, 10):
        for way in ("i2t", "t2i"):
            assert 0 <= metrics[f"{way}_recall_at_{k}"] <= 1
            assert 0 < metrics[f"chance_{way}_recall_at_{k}"] < 1
    for way in ("i2t", "t2i"):
        assert metrics[f"{way}_recall_at_10_ci_low"] <= metrics[f"{way}_recall_at_10"] <= metrics[
            f"{way}_recall_at_10_ci_high"]
    for prefix in ("", "random_"):
        for pct in (1, 10, 100):
            assert 0 <= metrics[f"{prefix}linear_auc_{pct}pct"] <= 1
    assert metrics["num_pairs"] == 32 and metrics["step"] == 6
    assert (tmp_path / "eval" / "embeddings.png").stat().st_size > 1000
    assert (tmp_path / "eval" / "retrieval.png").stat().st_size > 1000
    capsys.readouterr()
    _check_retrieve(tmp_path, capsys)


def _check_retrieve(workdir, capsys):
    """`cxr-jax retrieve` ranks by the cosine of the run's own embeddings, recomputed here in NumPy."""
    from PIL import Image

    from cxr_jax import config as config_lib
    from cxr_jax import parallel, runs
    from cxr_jax.data import phantom

    images = workdir / "images"
    (images / "sub").mkdir(parents=True)
    pixels = phantom.generate(6, image_size=32, seed=5)["image"][..., 0]
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(images / ("sub" if i % 2 else ".") / f"{i}.png")
    query = "The cardiac silhouette is enlarged."
    out = workdir / "retrieved"
    assert main.main(["retrieve", "--workdir", str(workdir), "--query", query, "--images", str(images), "--top-k",
                      "3", "--out", str(out)]) == 0
    result = json.loads((out / "matches.json").read_text())
    assert [m["rank"] for m in result["matches"]] == [1, 2, 3] and result["num_images"] == 6
    assert result["matches"][0]["file"] in capsys.readouterr().out and (out / "matches.png").stat().st_size > 1000

    config = config_lib.load_run(workdir)
    mesh = parallel.make_mesh()
    method, state, _ = runs.restore_method(config, workdir, mesh)
    files = sorted(images.rglob("*.png"))
    x = np.stack([np.asarray(Image.open(f))[..., None] for f in files]).astype(np.float32) / 127.5 - 1
    ids = method.tokenizer.encode(query, config.text.max_length)[None].repeat(len(x), 0)
    v = np.asarray(method.embed_images(state, {"image": x}), np.float64)
    u = np.asarray(method.embed_text(state, {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32)}))[0]
    scores = v @ u / np.linalg.norm(v, axis=1) / np.linalg.norm(u)
    best = np.argsort(-scores)[:3]
    assert [m["file"] for m in result["matches"]] == [str(files[i]) for i in best]
    np.testing.assert_allclose([m["score"] for m in result["matches"]], scores[best], rtol=1e-4)


def test_retrieve_errors_are_clear(tmp_path):
    proc = run_cli("retrieve", "--workdir", str(tmp_path), "--query", "x", "--images", str(tmp_path), "--out",
                   str(tmp_path / "o"), check=False)
    assert proc.returncode == 2 and "config.json does not exist" in proc.stderr


@pytest.mark.slow
def test_probes_learn_an_easy_label_from_a_random_encoder():
    import jax

    from cxr_jax import config as config_lib
    from cxr_jax import parallel
    from cxr_jax.methods.convirt import trainer as convirt_train

    config = config_lib.load(SMOKE, ["probe.finetune_steps=30", "probe.finetune_learning_rate=0.003",
                                     "probe.fractions=(0.1, 1.0)", "probe.seeds=2"])
    mesh = parallel.make_mesh(jax.devices()[:1])
    method = convirt_train.ConVIRT(config, mesh)
    state = jax.jit(method.init)(jax.random.key(0), {"image": np.zeros((8, 32, 32, 1), np.float32)})
    rng = np.random.default_rng(0)

    def split(n):  # Abnormal images carry a bright square; the rest is noise.
        labels = np.arange(n) % 2
        images = rng.normal(0, 0.3, size=(n, 32, 32, 1)).astype(np.float32)
        images[labels == 1, 8:20, 8:20] += 1.5
        return images, labels

    data = {"train": split(64), "eval": split(40)}
    tuned = convirt.fine_tune(method, state, data)
    assert tuned["finetune_auc_100pct"] > 0.95, tuned
    # The probe's plumbing (subsets, standardising, logistic regression, AUC) on a feature that separates.
    mean_pixel = types.SimpleNamespace(config=config, image_features=lambda s, b: b["image"].mean((1, 2)))
    probed = convirt.linear_probe(mean_pixel, state, mesh, data)
    assert set(probed) == {"linear_auc_10pct", "linear_auc_10pct_sd", "linear_auc_100pct"}  # sd over the 2 seeds.
    assert probed["linear_auc_10pct"] > 0.95 and probed["linear_auc_100pct"] > 0.95, probed
