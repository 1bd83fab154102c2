"""ConVIRT evaluation: image↔text retrieval on held-out pairs and linear probes against a random encoder.

Retrieval (data.eval, which must hold image–report pairs): each image's report is embedded in the unit the
model trained on (`embed_reports`: whole, section headers removed, truncated to `text.max_length`; or the mean
of its sentences' embeddings); `i2t_recall_at_k` is the fraction of images whose report is
among their k nearest reports, `t2i_recall_at_k` the converse. Identical report strings count as the same report
(phantom and covid reports repeat), and `chance_*` gives the expected recall of a random ranking under the same
rule.

Category retrieval (`retrieval.candidates` with image and/or text queries, CheXpert 8×200 format, see
`data.retrieval_sets`): Precision@5/10/50/100 image→image and text→image, with the chance level.

Linear probe (probe.train → probe.eval, normal vs abnormal): logistic regression on the frozen encoder's pooled
features, trained on fixed seeded subsets of 1%, 10% and 100% of the labelled examples (at least one of each
class), AUC averaged over `probe.seeds` subsets. Fine-tuning trains the whole image encoder with a new linear
head on the same subsets (binary cross-entropy, Adam, `probe.finetune_steps`; 0 skips it). `random_*` repeats
both from a freshly initialised encoder.
"""

from __future__ import annotations

import functools
import math
import pathlib

import jax
import numpy as np
import optax
from sklearn import linear_model
from sklearn import metrics as skm

from cxr_jax import parallel, runs, stats
from cxr_jax.config import ConfigError
from cxr_jax.data import retrieval_sets, sources, text
from cxr_jax.methods.convirt import pictures

KS = (1, 5, 10)
PRECISION_KS = (5, 10, 50, 100)


def evaluate(method, state, mesh, outdir: pathlib.Path) -> dict[str, float]:
    """Retrieval and linear probes for the trained and a random encoder; `embeddings.png`, `retrieval.png`."""
    config = method.config
    result = retrieval(method, state, mesh, outdir)
    random_state = jax.jit(method.init, out_shardings=parallel.replicated(mesh))(
        jax.random.key(config.seed + 1), _probe_batch(config))
    probe_data = {split: _labelled(config, config.probe[split]) for split in ("train", "eval")}
    category_set = read_category_set(config.retrieval) if config.retrieval.candidates else None
    for prefix, s in (("", state), ("random_", random_state)):
        if category_set:
            result.update({f"{prefix}{k}": v for k, v in category_retrieval(method, s, mesh, category_set).items()})
        result.update({f"{prefix}{k}": v for k, v in linear_probe(method, s, mesh, probe_data).items()})
        if config.probe.finetune_steps:
            result.update({f"{prefix}{k}": v for k, v in fine_tune(method, s, probe_data).items()})
    return result


def retrieval(method, state, mesh, outdir: pathlib.Path) -> dict[str, float]:
    """Recall@1/5/10 both ways with their chance levels, on `data.eval`."""
    config = method.config
    spec = config.data.eval
    data = sources.load(spec, image_size=config.image_size, seed=config.seed)
    key = "image" if "image" in data else "file"
    if "text" not in data or key not in data:
        raise sources.DataError(f"data.eval source {spec.source!r} has no image–text pairs to retrieve")
    image_emb, rows = runs.predict(method, state, {key: data[key]}, mesh, fn=method.embed_images,
                                   on_error=spec.on_error)
    reports = [_whole(t) for t in data["text"][rows]]
    text_emb = embed_reports(method, state, mesh, data["text"][rows])
    same = np.array(reports)[:, None] == np.array(reports)[None, :]
    scores = _normalize(image_emb) @ _normalize(text_emb).T
    result = {"num_pairs": float(len(reports))}
    for k in KS:
        for name, s in (("i2t", scores), ("t2i", scores.T)):
            hits = query_hits(s, same, k)
            result[f"{name}_recall_at_{k}"] = float(np.mean(hits))
            if k == KS[-1]:  # Pairs resampled: the 95 % interval of recall@10.
                result[f"{name}_recall_at_{k}_ci_low"], result[f"{name}_recall_at_{k}_ci_high"] = (
                    stats.mean_interval(hits, cfg=config.bootstrap))
        result[f"chance_i2t_recall_at_{k}"] = result[f"chance_t2i_recall_at_{k}"] = chance_recall_at_k(same, k)
    labels = data["label"][rows] if "label" in data else np.full(len(rows), -1)
    pictures.plot_embeddings(image_emb, labels, outdir / "embeddings.png")
    if "image" in data:
        pictures.retrieval_grid(data["image"][rows], reports, scores, same, outdir / "retrieval.png",
                                queries=_figure_queries(reports, labels))
    return result


def read_category_set(spec) -> dict:
    """The `retrieval.*` CSVs: `queries` by kind ('i2i': image files, 't2i': sentences) and `candidates`."""
    queries = {}
    if spec.image_queries:
        queries["i2i"] = retrieval_sets.read_queries(spec.image_queries, "Path", spec.root)
    if spec.text_queries:
        queries["t2i"] = retrieval_sets.read_queries(spec.text_queries, "Text", spec.root)
    if not queries:
        raise ConfigError("retrieval.candidates is set but neither retrieval.image_queries nor text_queries")
    candidates = retrieval_sets.read_candidates(
        spec.candidates, np.concatenate([categories for categories, _ in queries.values()]), spec.root)
    return {"queries": queries, "candidates": candidates}


def category_retrieval(method, state, mesh, category_set: dict) -> dict[str, float]:
    """`i2i_/t2i_precision_at_{5,10,50,100}` on a CheXpert 8×200-format set (`read_category_set`), beside chance.

    Precision@k: the fraction of a query's k nearest candidates (cosine of the embeddings) in its category,
    averaged over queries; k larger than the candidate set is left out. Precision@10 comes with the 95 %
    bootstrap interval over queries (`_ci_low/high`): real sets give few queries per category.
    """
    queries, candidates = category_set["queries"], category_set["candidates"]
    embed = functools.partial(_embed_files, method, state, mesh)
    candidate_emb = _normalize(embed(candidates["file"]))
    result = {"num_candidates": float(len(candidate_emb))}
    for kind, (categories, items) in queries.items():
        query_emb = embed(items) if kind == "i2i" else embed_texts(method, state, mesh, items)
        relevant = np.stack([candidates["relevant"][c] for c in categories])
        scores = _normalize(query_emb) @ candidate_emb.T
        for k in (k for k in PRECISION_KS if k <= scores.shape[1]):
            per_query = query_precisions(scores, relevant, k)
            result[f"{kind}_precision_at_{k}"] = float(np.mean(per_query))
            if k == 10:  # Queries resampled: the 95 % interval of precision@10.
                result[f"{kind}_precision_at_10_ci_low"], result[f"{kind}_precision_at_10_ci_high"] = (
                    stats.mean_interval(per_query, cfg=method.config.bootstrap))
        result[f"chance_{kind}_precision"] = float(relevant.mean())
    return result


def precision_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Mean over queries (rows) of the relevant fraction among the k highest scores (ties broken by index)."""
    return float(np.mean(query_precisions(scores, relevant, k)))


def query_precisions(scores: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """[Q]: each query's (row's) relevant fraction among its k highest scores."""
    return _top_k_relevance(scores, relevant, k).mean(axis=1)


def embed_reports(method, state, mesh, reports) -> np.ndarray:
    """Report embeddings [N, d] in the unit the model was trained on (`text.unit`).

    `report`: each report embedded whole. `sentence`: the mean of its sentences' unit-length embeddings (its
    first `text.max_sentences`), since such a model never saw a whole report, only one sentence at a time.
    """
    config = method.config.text
    if config.unit != "sentence":
        return embed_texts(method, state, mesh, [_whole(t) for t in reports])
    parts = [text.sentences(t)[:config.max_sentences] or [t] for t in reports]
    flat = _normalize(embed_texts(method, state, mesh, [s for p in parts for s in p]))
    ends = np.cumsum([len(p) for p in parts])
    return np.stack([flat[end - len(p):end].mean(0) for p, end in zip(parts, ends)])


def _whole(report: str) -> str:
    """A report as one text, section headers removed: what is embedded whole and what identity compares."""
    return " ".join(text.sentences(report)) or report


def embed_texts(method, state, mesh, texts) -> np.ndarray:
    """Embeddings [N, d] of whole texts, each tokenised to `text.max_length`."""
    ids = np.stack([method.tokenizer.encode(t, method.config.text.max_length) for t in texts])
    tokens = {"input_ids": ids, "attention_mask": (ids != method.tokenizer.pad_id).astype(np.int32)}
    return runs.predict(method, state, tokens, mesh, fn=method.embed_text, preprocess=None)[0]


def _embed_files(method, state, mesh, files) -> np.ndarray:
    """Image embeddings [N, d] of image files, read in tf.data (any bad file stops with its name)."""
    return runs.predict(method, state, {"file": np.asarray(files, object)}, mesh, fn=method.embed_images)[0]


def recall_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Fraction of queries (rows) with a relevant candidate among their k highest scores (ties broken by index)."""
    return float(np.mean(query_hits(scores, relevant, k)))


def query_hits(scores: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """[Q]: whether each query (row) has a relevant candidate among its k highest scores."""
    return _top_k_relevance(scores, relevant, k).any(axis=1)


def _top_k_relevance(scores: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """[Q, k]: whether each query's k highest-scoring candidates are relevant (ties broken by index)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(relevant, top, axis=1)


def chance_recall_at_k(relevant: np.ndarray, k: int) -> float:
    """Expected `recall_at_k` of a uniformly random ranking: 1 − C(N − m, k) / C(N, k) per query, m relevant."""
    n = relevant.shape[1]
    m = relevant.sum(axis=1)
    return float(np.mean([1.0 - math.comb(n - int(r), k) / math.comb(n, k) for r in m]))


def linear_probe(method, state, mesh, data: dict) -> dict[str, float]:
    """`linear_auc_{1,10,100}pct`: logistic regression on frozen pooled features, mean AUC over seeded subsets."""
    probe = method.config.probe
    (x_train, y_train), (x_eval, y_eval) = (
        (runs.predict(method, state, {"image": data[split][0]}, mesh, fn=method.image_features, preprocess=None)[0],
         data[split][1]) for split in ("train", "eval"))
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    result = {}
    for fraction in probe.fractions:
        aucs = []
        for seed in range(probe.seeds if fraction < 1 else 1):
            subset = labelled_subset(y_train, fraction, seed)
            clf = linear_model.LogisticRegression(C=probe.inverse_l2, max_iter=2000)
            clf.fit((x_train[subset] - mean) / std, y_train[subset])
            aucs.append(skm.roc_auc_score(y_eval, clf.decision_function((x_eval - mean) / std)))
        result[f"linear_auc_{round(fraction * 100)}pct"] = float(np.mean(aucs))
        if len(aucs) > 1:  # How much the labelled subset matters.
            result[f"linear_auc_{round(fraction * 100)}pct_sd"] = float(np.std(aucs, ddof=1))
    return result


def fine_tune(method, state, data: dict) -> dict[str, float]:
    """`finetune_auc_{1,10,100}pct`: encoder + new linear head trained end to end on each labelled subset."""
    config, probe = method.config, method.config.probe
    encoder = method.model.image_encoder
    start = jax.device_get({"params": state.params["model"]["image_encoder"],
                            "batch_stats": state.model_state["batch_stats"]["image_encoder"]})
    width = jax.eval_shape(lambda v: encoder.apply(v, data["eval"][0][:1]), start).shape[-1]
    tx = optax.adam(probe.finetune_learning_rate)

    def loss_fn(params, stats, images, labels):
        features, updates = encoder.apply({"params": params["encoder"], "batch_stats": stats}, images, train=True,
                                          mutable=["batch_stats"])
        logits = features @ params["head"]["kernel"] + params["head"]["bias"]
        return optax.sigmoid_binary_cross_entropy(logits[:, 0], labels).mean(), updates["batch_stats"]

    @jax.jit
    def step(params, stats, opt_state, images, labels):
        (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, images, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state

    @jax.jit
    def scores(params, stats, images):
        features = encoder.apply({"params": params["encoder"], "batch_stats": stats}, images)
        return (features @ params["head"]["kernel"] + params["head"]["bias"])[:, 0]

    (x_train, y_train), (x_eval, y_eval) = data["train"], data["eval"]
    result = {}
    for fraction in probe.fractions:
        aucs = []
        for seed in range(probe.seeds if fraction < 1 else 1):
            subset = labelled_subset(y_train, fraction, seed)
            params = {"encoder": start["params"], "head": {"kernel": np.zeros((width, 1), np.float32),
                                                           "bias": np.zeros(1, np.float32)}}
            stats, opt_state = start["batch_stats"], tx.init(params)
            rng = np.random.default_rng(seed)
            for _ in range(probe.finetune_steps):
                rows = rng.choice(subset, size=config.batch_size, replace=len(subset) < config.batch_size)
                labels = y_train[rows].astype(np.float32)
                params, stats, opt_state = step(params, stats, opt_state, x_train[rows], labels)
            out = np.concatenate([scores(params, stats, x_eval[i:i + config.batch_size])
                                  for i in range(0, len(x_eval), config.batch_size)])
            aucs.append(skm.roc_auc_score(y_eval, out))
        result[f"finetune_auc_{round(fraction * 100)}pct"] = float(np.mean(aucs))
    return result


def _labelled(config, spec) -> tuple[np.ndarray, np.ndarray]:
    """Labelled images of a probe split in memory, as the eval preprocessing gives them ([-1, 1] floats)."""
    spec = spec.copy_and_resolve_references()
    spec.stream = False
    data = sources.labelled_images(sources.load(spec, image_size=config.image_size, seed=config.seed), spec.source)
    return data["image"].astype(np.float32) / 127.5 - 1.0, data["label"]


def labelled_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a seeded, class-stratified `fraction` of `labels`, at least one example per class."""
    rng = np.random.default_rng(seed)
    chosen = []
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        count = max(1, round(fraction * len(members)))
        chosen.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(chosen))


def _figure_queries(reports: list[str], labels: np.ndarray, count: int = 3) -> np.ndarray:
    """Up to `count` distinct reports for the retrieval figure, abnormal ones first (their findings say most)."""
    chosen, seen = [], set()
    for i in np.argsort(-labels, kind="stable"):
        if reports[i] not in seen:
            seen.add(reports[i])
            chosen.append(i)
        if len(chosen) == count:
            break
    return np.array(chosen)


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _probe_batch(config) -> dict:
    size = config.image_size
    return {"image": np.zeros((config.batch_size, size, size, 1), np.float32)}
