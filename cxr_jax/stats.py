"""Statistics of evaluation results: bootstrap intervals of AUCs (patient-grouped) and of means."""

from __future__ import annotations

import numpy as np


def grouped_bootstrap_aucs(*, labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, num_resamples: int,
                           seed: int) -> np.ndarray:
    """AUCs [num_resamples, R] of R score vectors [R, N], all on the same resamples of groups.

    Each resample draws the groups with replacement; an image counts as often as its group was drawn, so an AUC
    is the weighted Mann–Whitney statistic Σ w_i w_j [s_i > s_j] (ties ½) / (W_pos W_neg) over positive i and
    negative j. NaN for a resample without both classes.
    """
    labels = np.asarray(labels) > 0
    scores = np.atleast_2d(np.asarray(scores, np.float64))
    _, group_of = np.unique(np.asarray(groups), return_inverse=True)
    num_groups = group_of.max() + 1
    draws = np.random.default_rng(seed).integers(0, num_groups, (num_resamples, num_groups))
    counts = np.zeros((num_resamples, num_groups))
    np.add.at(counts, (np.arange(num_resamples)[:, None], draws), 1.0)
    weights = counts[:, group_of]  # [B, N]
    w_pos, w_neg = weights[:, labels], weights[:, ~labels]
    with np.errstate(invalid="ignore"):
        total = w_pos.sum(1) * w_neg.sum(1)
        aucs = []
        for s in scores:
            pos, neg = s[labels][:, None], s[~labels][None]
            wins = (pos > neg) + 0.5 * (pos == neg)
            aucs.append(np.einsum("bp,pn,bn->b", w_pos, wins, w_neg) / total)
    return np.stack(aucs, axis=1)


def auc_interval(*, labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, cfg) -> tuple[float, float]:
    """The 95 % patient-bootstrap interval of one score vector's AUC (`cfg`: num_resamples, seed).

    NaN, NaN when `labels` hold one class, like the AUC itself (no resample could have two).
    """
    if len(np.unique(labels)) < 2:
        return float("nan"), float("nan")
    aucs = grouped_bootstrap_aucs(labels=labels, scores=scores[None], groups=groups,
                                  num_resamples=cfg.num_resamples, seed=cfg.seed)[:, 0]
    low, high = np.nanpercentile(aucs, [2.5, 97.5])
    return float(low), float(high)


def mean_interval(values: np.ndarray, *, cfg) -> tuple[float, float]:
    """The 95 % bootstrap interval of the mean of per-item `values` (e.g. each query's hit), items resampled."""
    values = np.asarray(values, np.float64)
    draws = np.random.default_rng(cfg.seed).integers(0, len(values), (cfg.num_resamples, len(values)))
    low, high = np.percentile(values[draws].mean(1), [2.5, 97.5])
    return float(low), float(high)
