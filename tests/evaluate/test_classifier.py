import numpy as np

from cxr_jax.evaluate.classifier import binary_metrics


def _mann_whitney_auc(labels, scores):
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return greater / (len(pos) * len(neg))


def test_binary_metrics_match_float64_reference():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    logits = np.round(rng.normal(labels * 0.8, 1.0), 1)  # Rounded: ties exercise the ½ credit.
    result = binary_metrics(labels=labels, logits=logits)
    np.testing.assert_allclose(result["auc"], _mann_whitney_auc(labels, logits), rtol=1e-12)
    p = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(result["loss"], np.mean(-(labels * np.log(p) + (1 - labels) * np.log(1 - p))),
                               rtol=1e-10)
    assert result["accuracy"] == np.mean((logits > 0) == labels)


def test_auc_is_nan_with_one_class():
    assert np.isnan(binary_metrics(labels=np.zeros(4), logits=np.arange(4.0))["auc"])
