r"""LD one-shot landmarks on real radiographs: settings chosen on jsrt train, reported on jsrt valid.

Every setting of the search (`landmarks.sigma`, `window`, `align`, `local_window`) is scored on the queries
of the tuning split (jsrt train without the template: the reported split is never looked at while
choosing), each addition alone and combined. The chosen ones are then run once on the reported split and printed beside
copying the template and NCC, with a paired bootstrap interval (over queries) of LD's MRE minus copy's.
Errors are in the queries' own pixels (512 px for jsrt), over the 120 contour points; the heart centre
(LD's own chest landmark) is reported as well.

    python experiments/ld_landmarks.py --workdir workdirs/ld_cxr --out docs/ld_landmarks.json

`--workdir` takes several runs (e.g. copies of one run's directory, each holding one kept checkpoint): the
tuning split then chooses the checkpoint as well.

`--reported-path DIR` scores any other directory in the jsrt layout (split `all`) instead of jsrt valid.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax import config as config_lib
from cxr_jax import parallel, runs
from cxr_jax.data import sources
from cxr_jax.methods.ld import evaluate as ld_eval
from cxr_jax.methods.ld import landmarks as lm

SIGMAS = (2.0, 4.0)
WINDOWS = (0.0, 8.0, 16.0, 24.0)  # Model pixels (128 px for 512: × 4 in the reported errors).
ALIGNS = ("none", "similarity", "affine")
LOCAL_WINDOWS = (0.0, 2.0)
ROWS = {  # Ablation rows: the settings each may choose (each addition alone, then together).
    "LD, whole image": dict(window=(0.0,), align=("none",), local_window=(0.0,)),
    "LD, window around the template": dict(window=WINDOWS[1:], align=("none",), local_window=(0.0,)),
    "template moved (similarity) onto whole-image matches": dict(window=(0.0,), align=("similarity",),
                                                                 local_window=(0.0,)),
    "template moved (affine) onto whole-image matches": dict(window=(0.0,), align=("affine",), local_window=(0.0,)),
    "template moved onto windowed matches": dict(window=WINDOWS[1:], align=("similarity", "affine"),
                                                 local_window=(0.0,)),
    "moved template, then a local search": dict(window=WINDOWS, align=("similarity", "affine"),
                                                local_window=LOCAL_WINDOWS[1:]),
}


def settings_grid() -> list[dict]:
    """Every setting scored on the tuning split (local windows only where there is an alignment)."""
    return [dict(sigma=s, window=w, align=a, local_window=lw)
            for s, w, a, lw in itertools.product(SIGMAS, WINDOWS, ALIGNS, LOCAL_WINDOWS)
            if a != "none" or lw == 0]


def load_split(config, spec) -> dict[str, np.ndarray]:
    """Queries of `spec` with all their landmarks; the heart centre, where known, appended as one more point."""
    data = ld_eval.with_landmarks(sources.load(spec, image_size=config.image_size, seed=config.seed), spec)
    data["landmarks"] = ld_eval.points(data, heart_centre="heart_centre" in data)
    return data


def errors_of(xy: np.ndarray, data: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Radial errors [N, L] in each query's own pixels."""
    return ld_eval.radial_errors(xy, data["landmarks"], data["orig_size"], size)


class Scorer:
    """Per-query errors [N, L] of LD's search under any settings; the network runs once per image set."""

    def __init__(self, method, state, mesh, template: dict[str, np.ndarray]):
        self.config, self.template = method.config, template
        self.embed = lambda images: runs.predict(method, state, {"image": images}, mesh)[0]["embedding"]
        self.cache = {}

    def pooled(self, name: str, images: np.ndarray, sigma: float) -> np.ndarray:
        """Centre-sensitive averages [N, S, S, D] of the set `name`'s embeddings, computed once per σ."""
        if (name, sigma) not in self.cache:
            if (name, None) not in self.cache:
                self.cache[name, None] = self.embed(images)
            embedding = self.cache[name, None]
            self.cache[name, sigma] = np.concatenate([np.asarray(lm.center_sensitive(embedding[i:i + 8], sigma=sigma))
                                                      for i in range(0, len(embedding), 8)])
        return self.cache[name, sigma]

    def __call__(self, name: str, queries: dict[str, np.ndarray], settings: dict) -> np.ndarray:
        """Errors [N, L] of LD's answer under `settings` on the set `name`."""
        c = self.config.landmarks
        t_xy = jnp.asarray(self.template["landmarks"][0])
        keys = lm.keys_at(self.pooled("template", self.template["image"], settings["sigma"])[0], t_xy)
        search = jax.jit(functools.partial(lm.search, keys=keys, template_xy=t_xy, refine=c.refine,
                                           temperature=c.refine_temperature, keep=c.align_keep,
                                           **{k: settings[k] for k in ("window", "align", "local_window")}))
        pooled = self.pooled(name, queries["image"], settings["sigma"])
        found = np.concatenate([search(jnp.asarray(pooled[i:i + 8]))["landmark"] for i in range(0, len(pooled), 8)])
        return errors_of(found, queries, self.config.image_size)


def summary(errors: np.ndarray, num: int) -> dict[str, float]:
    """MRE and SDR over the contour points, and the heart centre's error where it was appended."""
    result = ld_eval.landmark_metrics(errors[:, :num], prefix="x")
    result = {k[2:]: v for k, v in result.items()}
    if errors.shape[1] > num:
        result["heart_centre_error_px"] = float(errors[:, num].mean())
    return result


def paired_interval(a: np.ndarray, b: np.ndarray, *, resamples: int = 10_000, seed: int = 0) -> list[float]:
    """95 % bootstrap interval of mean(a) − mean(b) over queries (per-query means [N])."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(a), size=(resamples, len(a)))
    diffs = a[picks].mean(axis=1) - b[picks].mean(axis=1)
    return [float(x) for x in np.percentile(diffs, [2.5, 97.5])]


def main(argv=None) -> int:
    """Tunes on the template's split, reports the chosen settings; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, nargs="+",
                        help="trained LD runs (configs/ld.py:cxr), e.g. copies of one run's checkpoints; the "
                             "tuning split chooses among their latest checkpoints too")
    parser.add_argument("--out", required=True, help="JSON file for every measured number")
    parser.add_argument("--reported-path", default=None, help="another jsrt-layout directory to report on")
    args = parser.parse_args(argv)
    config = config_lib.load_run(args.workdir[0])
    mesh = parallel.make_mesh()
    template = load_split(config, config.data.template)
    num = template["landmarks"].shape[1] - ("heart_centre" in template)
    tune_spec = config.data.template.copy_and_resolve_references()
    tune_spec.num_examples = 0
    tuning = ld_eval.without_template(load_split(config, tune_spec), template["image"][0], tune_spec)
    reported_spec = config.data.eval.copy_and_resolve_references()
    if args.reported_path:
        reported_spec.update(path=args.reported_path, split="all", num_examples=0)
    reported = ld_eval.without_template(load_split(config, reported_spec), template["image"][0], reported_spec)
    print(f"{len(tuning['image'])} tuning queries ({tune_spec.path} {tune_spec.split}), "
          f"{len(reported['image'])} reported ({reported_spec.path} {reported_spec.split})", file=sys.stderr)

    tuned, scorers = {}, {}
    for workdir in args.workdir:
        method, state, step = runs.restore_method(config_lib.load_run(workdir), workdir, mesh)
        scorers[workdir] = Scorer(method, state, mesh, template)
        for settings in settings_grid():
            key = json.dumps({"workdir": workdir, "step": step, **settings})
            tuned[key] = summary(scorers[workdir]("tuning", tuning, settings), num)
            print(key, round(tuned[key]["mre_px"], 2), file=sys.stderr)

    rows = {}
    for row, allowed in ROWS.items():
        candidates = [s for s in map(json.loads, tuned) if all(s[k] in allowed[k] for k in allowed)]
        best = min(candidates, key=lambda s: tuned[json.dumps(s)]["mre_px"])
        errors = scorers[best["workdir"]]("reported", reported, best)
        rows[row] = {"settings": best, "tuning_mre_px": tuned[json.dumps(best)]["mre_px"],
                     **summary(errors, num), "per_query_mre_px": errors[:, :num].mean(1)}

    t_xy = template["landmarks"][0]
    baselines = {}
    for name, data in (("tuning", tuning), ("reported", reported)):
        copy = errors_of(np.broadcast_to(t_xy, data["landmarks"].shape), data, config.image_size)
        ncc = errors_of(ld_eval.ncc(data["image"], template["image"][0], t_xy, patch=config.landmarks.ncc_patch),
                        data, config.image_size)
        baselines[name] = {"copy": summary(copy, num), "ncc": summary(ncc, num),
                           "copy_per_query_mre_px": copy[:, :num].mean(1)}
    copy_q = baselines["reported"].pop("copy_per_query_mre_px")
    baselines["tuning"].pop("copy_per_query_mre_px")
    for row in rows.values():
        q = row.pop("per_query_mre_px")
        row["minus_copy_mre_px_95ci"] = paired_interval(q, copy_q)
        row["ratio_to_copy"] = float(q.mean() / copy_q.mean())
    result = {"workdirs": args.workdir, "reported": f"{reported_spec.path} {reported_spec.split}",
              "num_reported_queries": len(reported["image"]), "num_tuning_queries": len(tuning["image"]),
              "baselines": baselines, "rows": rows, "tuning": tuned}
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for name, row in rows.items():
        print(f"{name:52s} {row['settings']} MRE {row['mre_px']:.1f} (copy "
              f"{baselines['reported']['copy']['mre_px']:.1f}, ×{row['ratio_to_copy']:.2f}, Δ 95 % CI "
              f"{row['minus_copy_mre_px_95ci'][0]:.1f}..{row['minus_copy_mre_px_95ci'][1]:.1f}) "
              f"SDR10 {row['sdr_10px']:.3f} (copy {baselines['reported']['copy']['sdr_10px']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
