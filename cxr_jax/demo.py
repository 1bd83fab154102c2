"""`cxr-jax demo`: the three methods trained briefly on the embedded phantom, each beside its baseline.

Each method's `demo` config, shortened by the overrides in DEMOS to fit the demo's budget (ten minutes on two
CPU cores for all three), trains into `W/<method>` and is evaluated there like any run; `W/index.html` shows
each method's figures and a table of its metrics against its baseline. The runs are ordinary run directories:
rerunning the demo continues a run from its latest checkpoint and skips evaluations already written, and
`cxr-jax evaluate --workdir W/<method>` or the method's commands (decompose, retrieve, landmarks) work on them.
Nothing here imports a method: what to show of each is data (DEMOS).
"""

from __future__ import annotations

import dataclasses
import html
import json
import multiprocessing
import os
import pathlib
import queue as queue_lib
import re
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence

from cxr_jax import config as config_lib


@dataclasses.dataclass(frozen=True)
class Row:
    """One metric of a method beside the same metric of its baseline (keys of `W/<method>/eval/metrics.json`)."""

    label: str
    metric: str
    baseline: str | None  # The baseline's key; None where only chance compares (e.g. ConVIRT's recall).
    higher_is_better: bool = True
    chance: str | None = None  # The key of a random guess's value, where the evaluation reports one.


@dataclasses.dataclass(frozen=True)
class Demo:
    """A method's demo run: its config and shortening overrides, its baseline, table rows and figures."""

    title: str
    what: str  # One sentence: what the method does and what its baseline is.
    overrides: tuple[str, ...]
    baseline: str
    rows: tuple[Row, ...]
    figures: tuple[tuple[str, str], ...]  # (path under the run directory, caption).
    full: str  # What the full `demo` config reaches, and where that is measured.
    minutes: float  # Its demo's time on one CPU core, measured: `plan_lanes` balances the lanes with it.


DEMOS = {
    "dgm": Demo(
        "DGM: synthesised normal image and disease residue",
        "The residue |r| scores each pixel; an image's score is its top 5 % inside the lungs. Baseline: an "
        "autoencoder trained on the same batches' normal images, scored by its reconstruction error.",
        ("train.num_steps=150", "train.checkpoint_every=50", "train.log_every=10", "eval.every=0",
         "data.eval.num_examples=128"),
        "autoencoder",
        (Row("image AUC, normal vs abnormal", "image_auc", "ae_image_auc"),
         Row("pixel AUROC against lesion masks", "pixel_auroc", "ae_pixel_auroc"),
         Row("pointing: the top score inside the lesion", "pointing_accuracy", "ae_pointing_accuracy",
             chance="pointing_chance")),
        (("eval/cases.png", "input, synthesised normal, residue and salient regions"),),
        "The full `configs/dgm.py:demo` (1000 steps) is measured in docs/dgm.md; the autoencoder still wins there "
        "(issue 21).", 8.0),
    "convirt": Demo(
        "ConVIRT: image–report contrastive pretraining",
        "Held-out image–report pairs: text→image recall@10, and a logistic-regression probe (normal vs abnormal) "
        "on the frozen image encoder with 1 % and all of its labels. Baselines: a random ranking and a "
        "randomly initialised encoder.",
        ("train.num_steps=300", "train.checkpoint_every=100", "train.log_every=25", "probe.finetune_steps=0",
         "probe.fractions=(0.01, 1.0)", "data.eval.num_examples=128"),
        "random encoder",
        (Row("text→image recall@10", "t2i_recall_at_10", None, chance="chance_t2i_recall_at_10"),
         Row("image→text recall@10", "i2t_recall_at_10", None, chance="chance_i2t_recall_at_10"),
         Row("linear probe AUC, 1 % of labels", "linear_auc_1pct", "random_linear_auc_1pct"),
         Row("linear probe AUC, all labels", "linear_auc_100pct", "random_linear_auc_100pct")),
        (("eval/retrieval.png", "text→image retrieval on held-out pairs"),
         ("eval/embeddings.png", "image embeddings, first two principal components")),
        "The full `configs/convirt.py:demo` (2000 steps) reaches probe AUC 0.88 at 1 % and recall@10 2.8× chance "
        "(docs/convirt.md).", 5.0),
    "ld": Demo(
        "LD: one-shot landmarks from pixel embeddings",
        "Landmarks located on held-out images from one labelled template by matching the U-Net's pixel "
        "embeddings. Baseline: copying the template's coordinates.",
        ("train.num_steps=150", "loss.stage1_steps=100", "train.checkpoint_every=50", "train.log_every=10",
         "eval.every=0"),
        "copy the template",
        (Row("mean radial error (px)", "landmark_mre_px", "copy_mre_px", higher_is_better=False),
         Row("within 5 px", "landmark_sdr_5px", "copy_sdr_5px")),
        (("eval/landmarks.png", "best and worst queries: prediction, ground truth and template copy"),),
        "The full `configs/ld.py:demo` (600 steps) is measured in docs/ld.md.", 3.0),
}


def configs(methods: Sequence[str], *, variant: str = "demo", overrides: Sequence[str] = ()) -> dict[str, object]:
    """Each method's config: `configs/<method>.py:<variant>`, DEMOS' overrides, then `overrides` (e.g. tests')."""
    unknown = [m for m in methods if m not in DEMOS]
    if unknown or not methods:
        raise config_lib.ConfigError(f"--methods {','.join(methods)!r}: expected a comma-separated subset of "
                                     f"{','.join(DEMOS)}")
    out = {}
    for name in methods:
        config = config_lib.method_config(name, variant)
        config = config_lib.apply_overrides(config, [*DEMOS[name].overrides, *overrides])
        config_lib.validate(config, source=f"configs/{name}.py:{variant}")
        out[name] = config
    return out


def run(workdir: str | pathlib.Path, methods: Sequence[str], *, status: Callable[[str], None] = print,
        variant: str = "demo", overrides: Sequence[str] = (), lanes: int | None = None) -> dict[str, dict]:
    """Trains and evaluates each method's demo (resuming what is there), then writes `W/index.html`.

    With several CPU cores the methods run in `lanes` processes at once (default: one per core, at most one per
    method), each pinned to its share of the cores and logging to `W/logs/<method>.log`; XLA:CPU gains less
    from a second core inside one small step than from a second step beside it. One lane runs in this process.
    """
    workdir = pathlib.Path(workdir)
    chosen = configs(methods, variant=variant, overrides=overrides)
    results = {name: _finished(workdir / name, config.train.num_steps) for name, config in chosen.items()}
    for name in methods:
        if results[name] is not None:
            status(f"{name}: trained and evaluated already ({workdir / name / 'eval'})")
    todo = [name for name in methods if results[name] is None]
    cores = sorted(os.sched_getaffinity(0))
    plan = plan_lanes(todo, lanes or len(cores))
    if len(plan) == 1:
        for name in plan[0]:
            results[name] = _train_and_evaluate(name, chosen[name], workdir / name, status)
            status(f"{name}: done; {headline(name, results[name])}")
    elif plan:
        totals = {name: config.train.num_steps for name, config in chosen.items()}
        results.update(_run_lanes(workdir, plan, cores, totals, status, variant=variant, overrides=overrides))
    write_index(workdir, results)
    return results


def plan_lanes(methods: Sequence[str], lanes: int) -> list[list[str]]:
    """`methods` split into at most `lanes` groups of similar cost (`Demo.minutes`), longest first."""
    groups = [[] for _ in range(max(1, min(lanes, len(methods))))]
    load = [0.0] * len(groups)
    for name in sorted(methods, key=lambda m: -DEMOS[m].minutes):
        i = load.index(min(load))
        groups[i].append(name)
        load[i] += DEMOS[name].minutes
    return [g for g in groups if g]


def _train_and_evaluate(name: str, config, run_dir: pathlib.Path, status: Callable[[str], None]) -> dict:
    from cxr_jax import runs
    from cxr_jax.train import loop

    status(f"{name}: training {config.train.num_steps} steps into {run_dir} (compiling first)")
    loop.train(config, run_dir)
    status(f"{name}: evaluating against its baseline ({DEMOS[name].baseline})")
    return runs.evaluate(config, run_dir)


def _run_lanes(workdir: pathlib.Path, plan: list[list[str]], cores: list[int], totals: dict[str, int],
               status: Callable[[str], None], **config_args) -> dict[str, dict]:
    """Runs each lane in a spawned process on its share of `cores`; reports their progress until all end."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    shares = [cores[i::len(plan)] or cores for i in range(len(plan))]  # More lanes than cores: they share.
    processes = [context.Process(target=_lane, args=(workdir, lane, share, queue), kwargs=config_args, daemon=True)
                 for lane, share in zip(plan, shares)]
    for process in processes:
        process.start()
    status(f"running {' | '.join(' then '.join(lane) for lane in plan)} side by side on {len(cores)} cores; "
           f"logs in {workdir / 'logs'}")
    results, failed = {}, []
    try:
        results, failed = _follow(queue, processes, workdir, totals, status)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
    failed += [n for lane in plan for n in lane if n not in results and n not in failed]  # E.g. killed.
    if failed:
        raise DemoError(f"{', '.join(failed)} failed; see {workdir / 'logs'}")
    return results


_EVERY_S = 15.0  # How often `_follow` reports the lanes' newest logged steps.


def _follow(queue, processes, workdir: pathlib.Path, totals: dict[str, int],
            status: Callable[[str], None]) -> tuple[dict, list[str]]:
    """Prints each lane's news (phase changes, and the newest logged step every `_EVERY_S`) until all exit."""
    results, failed, phase, shown, last = {}, [], {}, {}, 0.0
    while True:
        try:
            name, what, payload = queue.get(timeout=1.0)
            phase[name] = payload.split()[0] if what == "status" else what  # training | evaluating | done | failed
            if what == "done":
                results[name] = payload
                status(f"{name}: done; {headline(name, payload)}")
            elif what == "failed":
                failed.append(name)
                status(f"{name}: failed: {payload}")
            else:
                status(f"{name}: {payload}")
        except queue_lib.Empty:
            if not any(p.is_alive() for p in processes):
                break
        if time.monotonic() - last >= _EVERY_S:
            last = time.monotonic()
            steps = {n: _last_step(workdir / n) for n, p in phase.items() if p == "training"}
            news = {n: s for n, s in steps.items() if s is not None and shown.get(n) != s}
            if news:
                shown.update(news)
                status("  " + " | ".join(f"{n} step {s}/{totals[n]}" for n, s in news.items()))
    return results, failed


def _lane(workdir: pathlib.Path, names: list[str], cores: list[int], queue, **config_args) -> None:
    """A lane's process: pinned to `cores`, its output in `W/logs/<method>.log`, news on `queue`."""
    os.sched_setaffinity(0, cores)
    chosen = configs(names, **config_args)
    for name in names:
        with open(workdir / "logs" / f"{name}.log", "a") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                result = _train_and_evaluate(name, chosen[name], workdir / name,
                                             lambda line, n=name: queue.put((n, "status", line.split(": ", 1)[1])))
            except BaseException as e:
                traceback.print_exc()
                queue.put((name, "failed", f"{type(e).__name__}: {e}"))
                return
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            queue.put((name, "done", result))


def _finished(run_dir: pathlib.Path, num_steps: int) -> dict[str, float] | None:
    """The run's evaluation if it is of its final step, else None."""
    path = run_dir / "eval" / "metrics.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if result.get("step") == num_steps else None


def _last_step(run_dir: pathlib.Path) -> int | None:
    """The newest step in `run_dir/metrics.jsonl` (its last line), or None."""
    try:
        lines = (run_dir / "metrics.jsonl").read_bytes().splitlines()
        return int(json.loads(lines[-1])["step"]) if lines else None
    except (OSError, ValueError, KeyError):
        return None


class DemoError(RuntimeError):
    """A method of the demo failed; its log says why."""


def summary(results: dict[str, dict[str, float]]) -> list[str]:
    """One line per method: its `headline`."""
    return [f"{name:8s} {headline(name, result)}" for name, result in results.items()]


def headline(name: str, result: dict[str, float]) -> str:
    """A method's first table row: its metric against its baseline (or chance)."""
    demo, row = DEMOS[name], DEMOS[name].rows[0]
    against = (f"{demo.baseline} {_number(result.get(row.baseline))}" if row.baseline else
               f"chance {_number(result.get(row.chance))}")
    return f"{row.label}: {_number(result.get(row.metric))} against {against}"


def write_index(workdir: pathlib.Path, results: dict[str, dict[str, float]]) -> pathlib.Path:
    """`W/index.html`: per method its table against the baseline, its figures and how to reproduce the run."""
    sections = [_section(workdir, name, result) for name, result in results.items()]
    page = (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>cxr-jax demo</title>\n<style>{_CSS}</style>"
            "</head><body>\n<h1>cxr-jax demo</h1>\n<p>Each method trained briefly on the embedded phantom (synthetic "
            "chest X-rays with known findings) and evaluated on held-out phantom images beside its baseline. "
            "The runs are short: the numbers show that each method runs end to end, not what it reaches.</p>\n"
            + "\n".join(sections) + "\n</body></html>\n")
    path = workdir / "index.html"
    path.write_text(page)
    return path


def _section(workdir: pathlib.Path, name: str, result: dict[str, float]) -> str:
    demo = DEMOS[name]
    chance = any(row.chance for row in demo.rows)
    rows = []
    for row in demo.rows:
        ours = result.get(row.metric)
        base = result.get(row.baseline or row.chance)  # What the method must beat.
        better = ours is not None and base is not None and (ours > base if row.higher_is_better else ours < base)
        base = result.get(row.baseline) if row.baseline else None
        rows.append(f"<tr><td>{html.escape(row.label)}</td><td class='{'win' if better else ''}'>{_number(ours)}"
                    f"</td><td>{_number(base)}</td>"
                    + (f"<td>{_number(result.get(row.chance) if row.chance else None)}</td>" if chance else "")
                    + "</tr>")
    figures = "".join(
        f"<figure><img src='{name}/{path}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}"
        f"</figcaption></figure>" for path, caption in demo.figures if (workdir / name / path).is_file())
    command = (f"cxr-jax train --config configs/{name}.py:demo --workdir {name} "
               + " ".join(shlex.quote(f"--config.{o}") for o in demo.overrides))
    return (f"<section id='{name}'><h2>{html.escape(demo.title)}</h2><p>{html.escape(demo.what)}</p>\n"
            f"<table><tr><th>metric</th><th>{name}</th><th>{html.escape(demo.baseline)}</th>"
            + ("<th>chance</th>" if chance else "") + "</tr>"
            + "".join(rows) + f"</table>\n<p class='small'>Step {_number(result.get('step'), '.0f')}. "
            f"{_code(demo.full)}<br>Reproduce: <code>{html.escape(command)}</code>, then "
            f"<code>cxr-jax evaluate --workdir {name}</code>.</p>\n{figures}</section>")


def _code(text: str) -> str:
    """`text` as HTML, its `backquoted` parts as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _number(value, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}td.win{font-weight:bold;background:#e6f4e6}"
        "img{max-width:100%;border:1px solid #ddd}figure{margin:1em 0}.small{font-size:90%;color:#555}"
        "section{margin-bottom:3em}")
