"""ConVIRT's InfoNCE against a float64 closed form, on one device and on 8 devices (global negatives)."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.test_util import check_grads

from cxr_jax.methods.convirt import losses as contrastive
from tests.conftest import ROOT, cli_env
from tests.methods.convirt import reference


def _pairs(n=6, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("tau,weight", [(0.1, 0.75), (0.5, 0.3), (1.0, 1.0)])
def test_loss_and_gradients_match_float64_closed_form(tau, weight):
    image, text = _pairs()
    fn = lambda i, t: contrastive.info_nce(image=i, text=t, temperature=tau, image_weight=weight)  # noqa: E731
    value, (gi, gt) = jax.value_and_grad(fn, argnums=(0, 1))(image, text)
    want, want_gi, want_gt = reference.info_nce(image, text, tau, weight)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    np.testing.assert_allclose(gi, want_gi, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gt, want_gt, rtol=1e-4, atol=1e-6)


def test_weight_selects_the_direction():
    image, text = _pairs()
    text_shuffled = text[::-1]
    one_way = contrastive.info_nce(image=image, text=text_shuffled, temperature=0.1, image_weight=1.0)
    other_way = contrastive.info_nce(image=text_shuffled, text=image, temperature=0.1, image_weight=0.0)
    np.testing.assert_allclose(one_way, other_way, rtol=1e-6)  # λ=1 on (v, u) is λ=0 on (u, v).


def test_gradients_by_finite_differences():
    image, text = _pairs(4, 3)
    check_grads(lambda i, t, tau: contrastive.info_nce(image=i, text=t, temperature=tau), (image, text, 0.3),
                order=1, modes=("rev",), atol=2e-2, rtol=2e-2)


def test_perfectly_aligned_pairs_approach_zero_loss():
    eye = np.eye(8, dtype=np.float32)
    assert float(contrastive.info_nce(image=eye, text=eye * 3.0, temperature=0.01)) < 1e-6
    np.testing.assert_allclose(contrastive.retrieval_accuracy(image=eye, text=eye[::-1]), 0.0)
    np.testing.assert_allclose(contrastive.retrieval_accuracy(image=eye, text=eye), 1.0)


def test_eight_devices_use_the_global_batch_as_negatives():
    n, d, tau, weight = 32, 7, 0.1, 0.75
    args = [str(n), str(d), str(tau), str(weight)]
    proc = subprocess.run([sys.executable, "-m", "tests.methods.convirt.global_batch", *args],
                          cwd=ROOT, env=cli_env(devices=8), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    want, want_gi, want_gt = reference.info_nce(np.array(out["image"]), np.array(out["text"]), tau, weight)
    np.testing.assert_allclose(out["loss"], want, rtol=1e-5)
    np.testing.assert_allclose(out["grad_image"], want_gi, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(out["grad_text"], want_gt, rtol=1e-4, atol=1e-7)
    assert out["devices_per_grad"] == 8
    # A per-device loss (negatives only from the device's own 4 rows) would be far from the global one.
    image, text = np.array(out["image"]), np.array(out["text"])
    local = np.mean([reference.info_nce(image[k:k + 4], text[k:k + 4], tau, weight)[0] for k in range(0, n, 4)])
    assert abs(local - want) > 0.5
