"""Normal/abnormal classification metrics: AUC with a patient-bootstrap interval, accuracy, cross-entropy.

`evaluate` also writes `eval/predictions.csv` (name, patient, label, logit per image) and `roc.png`.
`compare` reads the predictions of two sets of runs (e.g. seeds of a classifier with and without DGM residue
features) on the same eval images and gives the AUC difference with a paired bootstrap interval: resampling
patients, not images, because one patient's images are not independent (nih1000: 129 valid images from 44
patients).
"""

from __future__ import annotations

import csv
import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from cxr_jax import runs, stats  # noqa: E402
from cxr_jax.data.sources import DataError  # noqa: E402

PREDICTIONS = "predictions.csv"


def evaluate(method, state, mesh, outdir: pathlib.Path) -> dict[str, float]:
    """Scores the eval split; writes `predictions.csv` and `roc.png` to `outdir`."""
    config = method.config
    spec = config.data.eval
    examples = method.examples(spec, ids=True)
    names = examples.pop("name", np.arange(len(examples["label"])).astype(str))
    patients = examples.pop("patient", names)  # Without patient ids every image is its own group.
    logits, rows = runs.predict(method, state, examples, mesh, on_error=spec.on_error)
    labels, patients = examples["label"][rows], patients[rows]
    result = binary_metrics(labels=labels, logits=logits)
    result["auc_ci_low"], result["auc_ci_high"] = stats.auc_interval(labels=labels, scores=logits, groups=patients,
                                                                      cfg=config.bootstrap)
    result["num_patients"] = float(len(np.unique(patients)))
    _write_predictions(outdir / PREDICTIONS, names[rows], patients, labels, logits)
    _plot_roc(labels, logits, result["auc"], outdir / "roc.png")
    return result


def binary_metrics(*, labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """AUC (NaN when one class is absent), accuracy at logit 0, and mean binary cross-entropy."""
    labels = np.asarray(labels)
    logits = np.asarray(logits, np.float64)
    auc = skm.roc_auc_score(labels, logits) if len(np.unique(labels)) == 2 else float("nan")
    bce = np.mean(np.logaddexp(0.0, logits) - labels * logits)
    return {"auc": float(auc), "accuracy": float(np.mean((logits > 0) == (labels > 0))), "loss": float(bce),
            "num_examples": float(len(labels)), "positive_fraction": float(np.mean(labels))}


def compare(baseline: Sequence[str | pathlib.Path], candidate: Sequence[str | pathlib.Path], *,
            num_resamples: int, seed: int) -> dict[str, float]:
    """The candidate runs' mean AUC minus the baseline runs' mean AUC, with a paired patient-bootstrap interval.

    Each argument lists evaluated classifier runs (e.g. one per seed); all must have scored the same images.
    `p_not_better` is the fraction of resamples where the difference is ≤ 0 (a one-sided bootstrap p-value).
    """
    runs = [_read_predictions(pathlib.Path(r)) for r in (*baseline, *candidate)]
    first = runs[0]
    for run in runs[1:]:
        if not (np.array_equal(run["name"], first["name"]) and np.array_equal(run["label"], first["label"])):
            raise DataError(f"{run['path']}: scored other images (or labels) than {first['path']}; compare runs "
                            "evaluated on the same data.eval")
    scores = np.stack([r["logit"] for r in runs])
    point = np.array([skm.roc_auc_score(first["label"], s) for s in scores])
    boot = stats.grouped_bootstrap_aucs(labels=first["label"], scores=scores, groups=first["patient"],
                                         num_resamples=num_resamples, seed=seed)
    nb = len(baseline)
    delta = boot[:, nb:].mean(1) - boot[:, :nb].mean(1)
    delta = delta[np.isfinite(delta)]
    low, high = np.percentile(delta, [2.5, 97.5])
    return {"baseline_auc": float(point[:nb].mean()), "baseline_auc_sd": float(point[:nb].std()),
            "candidate_auc": float(point[nb:].mean()), "candidate_auc_sd": float(point[nb:].std()),
            "delta_auc": float(point[nb:].mean() - point[:nb].mean()), "delta_ci_low": float(low),
            "delta_ci_high": float(high), "p_not_better": float(np.mean(delta <= 0)),
            "num_images": float(len(first["label"])), "num_patients": float(len(np.unique(first["patient"]))),
            "num_baseline_runs": float(nb), "num_candidate_runs": float(len(candidate))}


def _write_predictions(path: pathlib.Path, names, patients, labels, logits) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "patient", "label", "logit"])
        writer.writerows(zip(names, patients, (int(v) for v in labels), (f"{v:.6g}" for v in logits)))


def _read_predictions(workdir: pathlib.Path) -> dict:
    path = workdir / "eval" / PREDICTIONS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no predictions; run `cxr-jax evaluate` on {workdir} (a classifier run)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or set(rows[0]) != {"name", "patient", "label", "logit"}:
        raise DataError(f"{path}: expected the columns name, patient, label, logit and at least one row")
    return {"path": path, "name": np.array([r["name"] for r in rows]),
            "patient": np.array([r["patient"] for r in rows]),
            "label": np.array([int(r["label"]) for r in rows]),
            "logit": np.array([float(r["logit"]) for r in rows])}


def _plot_roc(labels, logits, auc: float, path: pathlib.Path) -> None:
    fig, ax = plt.subplots(figsize=(4, 4))
    if len(np.unique(labels)) == 2:
        fpr, tpr, _ = skm.roc_curve(labels, logits)
        ax.plot(fpr, tpr, label=f"AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="normal vs abnormal")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
