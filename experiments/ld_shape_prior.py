r"""Why LD's unpaired shape prior does not beat the mean mask on jsrt (issue 22.3): inference on one `shape` run.

The prior (`configs/ld.py:shape`) only makes cluster channel 0 look like *some* lung mask; what ties it to
*this* image is LD's clustering. So channel 0 can beat the image-free mean mask only where (a) placing the
mean shape per image would gain anything and (b) the clusters carry that placement. For each evaluation set
this prints, as mean Dice with a 95 % bootstrap interval over images:

- `channel0`: the run's answer (`shape_dice_lungs` of `evaluate`); `mean_of_prior_masks`: its baseline;
  `mean_of_jsrt_train_masks`: the same from all of jsrt train's masks;
- `channel0_vs_other_images`: channel 0 scored against the *other* images' masks (the further below
  `channel0`, the more channel 0 follows its own image); `truth_vs_other_images`: the same for the true
  masks (how much lungs vary);
- `oracle_placed_mean`: the prior's mean shape scaled and shifted (the run's `shape.place_*` grid) to fit
  each true mask best, an upper bound on what placing the average shape per image could give;
- `mean_placed_on_channel0`: the prior's mean shape placed on the same grid where it best fits channel 0
  (`shape_placed_dice_<structure>` of `evaluate`, `methods/ld/placement.py`), which never looks at the truth;
- `cluster_union`: the union of LD's clusters (each pixel's most likely one) that best covers the lungs,
  chosen greedily on jsrt train: the image evidence the prior has to work with.

    python experiments/ld_shape_prior.py --workdir workdirs/ld_shape --out docs/ld_shape_prior.json

Sets: jsrt valid (the reported split), and covid (every image with a lung mask) and openist, whose lungs are
placed less like jsrt's; and jsrt train without the prior's masks (`jsrt_train`), where the placement was checked
before it became part of `evaluate`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import ml_collections
import numpy as np

from cxr_jax import parallel, runs, stats
from cxr_jax.data import sources
from cxr_jax.methods.ld import placement
from cxr_jax.methods.segment import evaluate as seg_eval

SETS = {"jsrt_valid": ("jsrt", "valid"), "covid": ("covid", "all"), "openist": ("openist", "all")}


def spec_for(eval_spec: ml_collections.ConfigDict, root: str, source: str, split: str) -> ml_collections.ConfigDict:
    """The run's `data.eval` spec pointed at all of `split` of `root/source`."""
    spec = ml_collections.ConfigDict(eval_spec.to_dict())
    spec.source, spec.path, spec.split, spec.num_examples, spec.patient_split = (
        source, str(pathlib.Path(root) / source), split, 0, False)
    return spec


def dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-image hard Dice of boolean [N, S, S] masks."""
    return seg_eval.dice_scores(pred[..., None], truth[..., None])[:, 0]


def interval(values: np.ndarray, *, cfg: ml_collections.ConfigDict) -> list[float]:
    """[mean, low, high]: the mean and its 95 % bootstrap interval over images (`cfg`: the run's `bootstrap`)."""
    return [round(float(v), 3) for v in (values.mean(), *stats.mean_interval(values, cfg=cfg))]


def cross_dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Each image's prediction scored against every other image's truth, averaged: [N]."""
    return np.array([dice(np.broadcast_to(p, truth.shape), truth)[np.arange(len(truth)) != i].mean()
                     for i, p in enumerate(pred)])


def greedy_union(labels: np.ndarray, truth: np.ndarray, num_clusters: int) -> tuple[list[int], float]:
    """Clusters added one at a time while the union's mean Dice against `truth` rises."""
    chosen, best = [], 0.0
    while len(chosen) < num_clusters:
        score, k = max((dice(np.isin(labels, [*chosen, k]), truth).mean(), k)
                       for k in range(num_clusters) if k not in chosen)
        if score <= best:
            break
        chosen, best = [*chosen, k], float(score)
    return chosen, best


def set_report(channels: np.ndarray, truth: np.ndarray, *, prior_mean: np.ndarray, train_mean: np.ndarray,
               chosen: list[int], config: ml_collections.ConfigDict) -> dict:
    """The numbers of one set from the run's cluster probabilities [N, S, S, K] and true masks [N, S, S]."""
    ch0 = channels[..., 0] > 0.5
    maps = placement.candidates_for(prior_mean, config.shape)
    cfg = config.bootstrap
    return {
        "num_images": len(truth),
        "channel0": interval(dice(ch0, truth), cfg=cfg),
        "mean_of_prior_masks": interval(dice(np.broadcast_to(prior_mean > 0.5, truth.shape), truth), cfg=cfg),
        "mean_of_jsrt_train_masks": interval(dice(np.broadcast_to(train_mean > 0.5, truth.shape), truth), cfg=cfg),
        "cluster_union": interval(dice(np.isin(channels.argmax(-1), chosen), truth), cfg=cfg),
        "channel0_vs_other_images": interval(cross_dice(ch0, truth), cfg=cfg),
        "truth_vs_other_images": interval(cross_dice(truth, truth), cfg=cfg),
        "oracle_placed_mean": interval(dice(placement.place(maps, truth), truth), cfg=cfg),
        "mean_placed_on_channel0": interval(dice(placement.place(maps, ch0), truth), cfg=cfg),
        "channel0_area_over_truth": round(float(ch0.sum() / truth.sum()), 3),
    }


def main(argv: list[str] | None = None) -> dict:
    """Runs the analysis on one run's checkpoint; returns (and prints) the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a finished `configs/ld.py:shape` run")
    parser.add_argument("--checkpoint", default="latest", help="latest, best or a step")
    parser.add_argument("--data-root", default="../shared/data", help="where jsrt, covid and openist are")
    parser.add_argument("--out", type=pathlib.Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    mesh = parallel.make_mesh()
    which = args.checkpoint if args.checkpoint in ("latest", "best") else int(args.checkpoint)
    config, method, state, step = runs.restore_run(args.workdir, "ld", needed="ld", mesh=mesh, which=which)

    def load(source: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        spec = spec_for(config.data.eval, args.data_root, source, split)
        data = sources.with_masks(sources.load(spec, image_size=config.image_size, seed=0), ("lungs",), spec)
        probs, rows = runs.predict(method, state, {"image": data["image"]}, mesh,
                                   fn=lambda s, b: method.predict(s, b)["assignment"])
        return np.asarray(probs)[np.argsort(rows)], data["masks"][..., 0].astype(bool)

    prior = np.asarray(method.shape_masks()[..., 0]).astype(bool)
    prior_mean = prior.mean(axis=0, dtype=np.float32)
    train_channels, train_truth = load("jsrt", "train")
    chosen, train_dice = greedy_union(train_channels.argmax(-1), train_truth, train_channels.shape[-1])
    result = {"workdir": str(args.workdir), "step": int(step), "clusters_chosen_on_jsrt_train": chosen,
              "cluster_union_dice_jsrt_train": round(train_dice, 3)}
    unseen = ~np.array([any(np.array_equal(t, m) for m in prior) for t in train_truth])
    sets = {"jsrt_train": (train_channels[unseen], train_truth[unseen])}  # Already predicted, without the prior's.
    for name in ["jsrt_train", *SETS]:
        channels, truth = sets[name] if name in sets else load(*SETS[name])
        result[name] = set_report(channels, truth, prior_mean=prior_mean, train_mean=train_truth.mean(axis=0),
                                  chosen=chosen, config=config)
        print(name, json.dumps(result[name]), file=sys.stderr, flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
