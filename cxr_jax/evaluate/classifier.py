"""Normal/abnormal classification metrics: AUC, accuracy, cross-entropy; ROC curve figure."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from cxr_jax.evaluate import common  # noqa: E402


def evaluate(method, state, mesh, outdir: pathlib.Path) -> dict[str, float]:
    """Scores the eval split; writes `roc.png` to `outdir`."""
    config = method.config
    spec = config.data.eval
    examples = method.examples(spec)
    logits, rows = common.predict(method.predict, state, examples, preprocess=method.preprocess_eval,
                                  batch_size=config.batch_size, mesh=mesh, image_size=config.image_size,
                                  on_error=spec.on_error)
    labels = examples["label"][rows]
    result = binary_metrics(labels=labels, logits=logits)
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
