import numpy as np
import pytest

from cxr_jax.data.sources import DataError
from cxr_jax.methods.classifier.evaluate import binary_metrics, compare
from tests.conftest import mann_whitney_auc


def test_binary_metrics_match_float64_reference():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    logits = np.round(rng.normal(labels * 0.8, 1.0), 1)  # Rounded: ties exercise the ½ credit.
    result = binary_metrics(labels=labels, logits=logits)
    np.testing.assert_allclose(result["auc"], mann_whitney_auc(labels, logits), rtol=1e-12)
    p = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(result["loss"], np.mean(-(labels * np.log(p) + (1 - labels) * np.log(1 - p))),
                               rtol=1e-10)
    assert result["accuracy"] == np.mean((logits > 0) == labels)


def test_auc_is_nan_with_one_class():
    assert np.isnan(binary_metrics(labels=np.zeros(4), logits=np.arange(4.0))["auc"])


def _write(workdir, names, patients, labels, logits):
    (workdir / "eval").mkdir(parents=True)
    rows = ["name,patient,label,logit"]
    rows += [f"{n},{p},{y},{float(s)!r}" for n, p, y, s in zip(names, patients, labels, logits)]
    (workdir / "eval" / "predictions.csv").write_text("\n".join(rows) + "\n")


def test_compare_finds_a_real_difference_and_only_then(tmp_path):
    rng = np.random.default_rng(0)
    n = 80
    names, patients, labels = [f"im{i}.png" for i in range(n)], [f"p{i // 2}" for i in range(n)], np.arange(n) % 2
    for seed in range(2):
        _write(tmp_path / f"noise{seed}", names, patients, labels, rng.normal(size=n))
        _write(tmp_path / f"good{seed}", names, patients, labels, labels + rng.normal(0, 0.5, n))
    noise, good = [tmp_path / "noise0", tmp_path / "noise1"], [tmp_path / "good0", tmp_path / "good1"]
    result = compare(noise, good, num_resamples=500, seed=0)
    point = [mann_whitney_auc(labels, np.loadtxt(d / "eval/predictions.csv", delimiter=",", skiprows=1,
                                                  usecols=3)) for d in (*noise, *good)]
    np.testing.assert_allclose(result["delta_auc"], np.mean(point[2:]) - np.mean(point[:2]), rtol=1e-12)
    assert result["delta_ci_low"] > 0.2 and result["p_not_better"] == 0.0 and result["num_patients"] == 40
    reverse = compare(good, noise, num_resamples=500, seed=0)
    assert reverse["delta_ci_high"] < -0.2 and reverse["p_not_better"] == 1.0
    tie = compare(noise[:1], noise[1:], num_resamples=500, seed=0)  # Two noise seeds: the interval spans 0.
    assert tie["delta_ci_low"] < 0 < tie["delta_ci_high"]


def test_compare_rejects_runs_on_other_images(tmp_path):
    _write(tmp_path / "a", ["x.png", "y.png"], ["1", "2"], [0, 1], [0.1, 0.2])
    _write(tmp_path / "b", ["x.png", "z.png"], ["1", "2"], [0, 1], [0.1, 0.2])
    with pytest.raises(DataError, match="b/eval/predictions.csv: scored other images"):
        compare([tmp_path / "a"], [tmp_path / "b"], num_resamples=10, seed=0)
    with pytest.raises(FileNotFoundError, match="run `cxr-jax evaluate`"):
        compare([tmp_path / "a"], [tmp_path / "missing"], num_resamples=10, seed=0)
