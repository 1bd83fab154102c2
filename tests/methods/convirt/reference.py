"""Float64 NumPy re-computation of ConVIRT's loss and its gradient (closed form, no autodiff)."""

import numpy as np


def _log_softmax(s):
    s = s - s.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def info_nce(image, text, temperature, weight):
    """Loss and gradients with respect to the raw (unnormalised) image and text embeddings."""
    x, y = np.asarray(image, np.float64), np.asarray(text, np.float64)
    nx, ny = np.linalg.norm(x, axis=1, keepdims=True), np.linalg.norm(y, axis=1, keepdims=True)
    v, u = x / nx, y / ny
    n = len(v)
    s = v @ u.T / temperature  # Row i: image i against every text.
    a, b = _log_softmax(s), _log_softmax(s.T)
    loss = -(weight * np.trace(a) + (1 - weight) * np.trace(b)) / n
    eye = np.eye(n)
    ds = (weight * (np.exp(a) - eye) + (1 - weight) * (np.exp(b) - eye).T) / n  # dL/ds.
    gv, gu = ds @ u / temperature, ds.T @ v / temperature
    gx = (gv - v * np.sum(v * gv, axis=1, keepdims=True)) / nx  # Through x / |x|.
    gy = (gu - u * np.sum(u * gu, axis=1, keepdims=True)) / ny
    return loss, gx, gy
