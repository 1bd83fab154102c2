r"""LD transfer over seeds: jsrt segmentation from 1, 5 or all labelled images, LD's encoder vs random weights.

Each cell trains `configs/segment.py:ld_transfer` once per seed and initialisation, evaluates it on jsrt valid at
its last step (Dice of left lung, right lung, heart, clavicles) and the table gives mean ± sd over seeds. A
seed fixes the decoder's initialisation, the augmentation and, for the few-shot cells, which training images
are labelled (`data.train.sample_seed`): both initialisations of one seed see the same images, so the paired
difference LD − random is reported too.

    python experiments/ld_transfer.py --ld-run workdirs/ld_cxr --runs workdirs/transfer \
        --out docs/ld_transfer.json --seeds 0 1 2 --labels 1 5 0 --steps 200

Each finished cell's metrics are read back from its run directory, so an interrupted sweep resumes where it
stopped. `--markdown` prints the table of an existing `--out` file (of the seeds finished so far).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

import numpy as np

from cxr_jax import metrics

STRUCTURES = ("left_lung", "right_lung", "heart", "clavicles")


def cell_args(*, ld_run: str | None, labels: int, seed: int, steps: int, freeze: int) -> list[str]:
    """`cxr-jax train` overrides of one cell (labels 0: the whole training split)."""
    args = ["--config", "configs/segment.py:ld_transfer", f"--config.seed={seed}",
            f"--config.data.train.num_examples={labels}", f"--config.data.train.sample_seed={seed}",
            f"--config.train.num_steps={steps}", f"--config.train.checkpoint_every={steps}",
            f"--config.eval.every={steps}", f"--config.train.log_every={max(steps // 4, 1)}",
            f"--config.optim.freeze_encoder_steps={freeze if ld_run else 0}"]
    return args + ([f"--config.model.encoder_from={ld_run}"] if ld_run else [])


def run_cell(workdir: pathlib.Path, args: list[str], steps: int) -> dict:
    """Trains one cell (unless its evaluation at `steps` is already there) and returns that evaluation."""
    history = workdir / "eval" / "history.jsonl"
    if not _final(history, steps):
        log = workdir.with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as out:  # Appended: a second sweep over a running cell must not wipe its log.
            code = subprocess.call(["cxr-jax", "train", "--workdir", str(workdir), *args], stdout=out,
                                   stderr=subprocess.STDOUT)
        if code:
            sys.exit(f"{workdir}: cxr-jax train exited with {code}; see {log}")
    result = _final(history, steps)
    if not result:
        sys.exit(f"{history}: no evaluation at step {steps}")
    return result


def _final(history: pathlib.Path, steps: int) -> dict | None:
    if not history.is_file():
        return None
    return next((r for r in metrics.read_jsonl(history) if r.get("step") == steps), None)


def summarise(cells: dict) -> dict:
    """Mean, sd and LD's paired wins per (labels, structure), over the seeds both initialisations finished."""
    summary = {}
    for labels, by_init in cells.items():
        n = min(len(by_init["ld"]), len(by_init["random"]))
        if not n:
            continue
        row = {}
        for s in (*STRUCTURES, "mean"):
            ld = np.array([r[f"dice_{s}"] for r in by_init["ld"][:n]])
            rand = np.array([r[f"dice_{s}"] for r in by_init["random"][:n]])
            row[s] = {"ld_mean": ld.mean(), "ld_sd": ld.std(ddof=1) if len(ld) > 1 else 0.0,
                      "random_mean": rand.mean(), "random_sd": rand.std(ddof=1) if len(rand) > 1 else 0.0,
                      "ld_wins": int((ld > rand).sum()), "seeds": len(ld)}
        summary[labels] = row
    return summary


def markdown(summary: dict) -> str:
    """The table: one row per label count, LD vs random per structure (mean ± sd, LD's paired wins)."""
    head = "| labelled images | " + " | ".join(s.replace("_", " ") for s in (*STRUCTURES, "mean")) + " |"
    lines = [head, "|" + " --- |" * (len(STRUCTURES) + 2)]
    for labels, row in summary.items():
        cells = []
        for s in (*STRUCTURES, "mean"):
            c = row[s]
            ld, rand = (f"{c[k + '_mean']:.3f}" + (f" ± {c[k + '_sd']:.3f}" if c["seeds"] > 1 else "")
                        for k in ("ld", "random"))
            cells.append(f"{ld} vs {rand} ({c['ld_wins']}/{c['seeds']})")
        lines.append(f"| {labels} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Runs the sweep (or prints `--out`'s table with `--markdown`)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ld-run", help="the LD run whose encoder starts the LD cells")
    p.add_argument("--runs", default="workdirs/transfer", help="where each cell's run directory goes")
    p.add_argument("--out", required=True, help="JSON with every cell's metrics and the summary")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--labels", type=int, nargs="+", default=[1, 5, 0], help="labelled images (0: all)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--freeze", type=int, default=50, help="steps the LD encoder stays frozen")
    p.add_argument("--markdown", action="store_true", help="print the table of --out and stop")
    a = p.parse_args(argv)
    out = pathlib.Path(a.out)
    if a.markdown:
        done = json.loads(out.read_text())  # A sweep still running has its cells but no summary yet.
        print(markdown(done.get("summary") or summarise(done["cells"])))
        return
    if not a.ld_run:
        p.error("--ld-run is required to run the sweep")
    names = {labels: "all" if labels == 0 else str(labels) for labels in a.labels}
    cells = {name: {"ld": [], "random": []} for name in names.values()}
    for seed in a.seeds:  # Seeds outer: a sweep cut short still has whole tables for its first seeds.
        for labels, name in names.items():
            for init, run in (("ld", a.ld_run), ("random", None)):
                workdir = pathlib.Path(a.runs) / f"{init}_{name}_s{seed}"
                args = cell_args(ld_run=run, labels=labels, seed=seed, steps=a.steps, freeze=a.freeze)
                cells[name][init].append(run_cell(workdir, args, a.steps))
                out.write_text(json.dumps({"settings": vars(a), "cells": cells}, indent=1))
    summary = summarise(cells)
    out.write_text(json.dumps({"settings": vars(a), "cells": cells, "summary": summary}, indent=1))
    print(markdown(summary))


if __name__ == "__main__":
    main()
