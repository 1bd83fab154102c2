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
import pathlib
from collections.abc import Callable, Sequence

from cxr_jax import config as config_lib


@dataclasses.dataclass(frozen=True)
class Row:
    """One metric of a method beside the same metric of its baseline (keys of `W/<method>/eval/metrics.json`)."""

    label: str
    metric: str
    baseline: str
    higher_is_better: bool = True


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
         Row("hit rate (lesion centre inside a salient box)", "hit_rate", "ae_hit_rate")),
        (("eval/cases.png", "input, synthesised normal, residue and salient regions"),),
        "The full `configs/dgm.py:demo` (1000 steps) is measured in docs/dgm.md; the autoencoder still wins there "
        "(issue 21)."),
    "convirt": Demo(
        "ConVIRT: image–report contrastive pretraining",
        "Held-out image–report pairs: text→image recall@10, and a logistic-regression probe (normal vs abnormal) "
        "on the frozen image encoder with 1 % and all of its labels. Baselines: a random ranking and a "
        "randomly initialised encoder.",
        ("train.num_steps=300", "train.checkpoint_every=100", "train.log_every=25", "probe.finetune_steps=0",
         "probe.fractions=(0.01, 1.0)", "data.eval.num_examples=128"),
        "chance / random encoder",
        (Row("text→image recall@10", "t2i_recall_at_10", "chance_t2i_recall_at_10"),
         Row("image→text recall@10", "i2t_recall_at_10", "chance_i2t_recall_at_10"),
         Row("linear probe AUC, 1 % of labels", "linear_auc_1pct", "random_linear_auc_1pct"),
         Row("linear probe AUC, all labels", "linear_auc_100pct", "random_linear_auc_100pct")),
        (("eval/retrieval.png", "text→image retrieval on held-out pairs"),
         ("eval/embeddings.png", "image embeddings, first two principal components")),
        "The full `configs/convirt.py:demo` (2000 steps) reaches probe AUC 0.88 at 1 % and recall@10 2.8× chance "
        "(docs/convirt.md)."),
    "ld": Demo(
        "LD: one-shot landmarks from pixel embeddings",
        "Landmarks located on held-out images from one labelled template by matching the U-Net's pixel "
        "embeddings. Baseline: copying the template's coordinates.",
        ("train.num_steps=150", "loss.stage1_steps=100", "train.checkpoint_every=50", "train.log_every=10",
         "eval.every=0"),
        "copy the template",
        (Row("mean radial error (px)", "landmark_mre_px", "copy_landmark_mre_px", higher_is_better=False),
         Row("within 5 px", "landmark_sdr_5px", "copy_landmark_sdr_5px")),
        (("eval/landmarks.png", "best and worst queries: prediction, ground truth and template copy"),),
        "The full `configs/ld.py:demo` (600 steps) is measured in docs/ld.md."),
}


def configs(methods: Sequence[str]) -> dict[str, object]:
    """Each method's demo config (`configs/<method>.py:demo` with DEMOS' overrides); unknown names are errors."""
    unknown = [m for m in methods if m not in DEMOS]
    if unknown or not methods:
        raise config_lib.ConfigError(f"--methods {','.join(methods)!r}: expected a comma-separated subset of "
                                     f"{','.join(DEMOS)}")
    out = {}
    for name in methods:
        config = config_lib.apply_overrides(config_lib.method_config(name, "demo"), DEMOS[name].overrides)
        config_lib.validate(config, source=f"configs/{name}.py:demo")
        out[name] = config
    return out


def run(workdir: str | pathlib.Path, methods: Sequence[str], *,
        status: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """Trains and evaluates each method's demo (resuming what is there), then writes `W/index.html`."""
    from cxr_jax import runs
    from cxr_jax.train import loop

    workdir = pathlib.Path(workdir)
    results = {}
    for i, (name, config) in enumerate(configs(methods).items(), start=1):
        run_dir = workdir / name
        results[name] = _finished(run_dir, config.train.num_steps)
        if results[name] is None:
            status(f"[{i}/{len(methods)}] {DEMOS[name].title.split(':')[0]}: training {config.train.num_steps} "
                   f"steps into {run_dir}")
            loop.train(config, run_dir)
            status(f"[{i}/{len(methods)}] evaluating {name} against its baseline ({DEMOS[name].baseline})")
            results[name] = runs.evaluate(config, run_dir)
        else:
            status(f"[{i}/{len(methods)}] {name}: trained and evaluated already ({run_dir / 'eval'})")
    write_index(workdir, results)
    return results


def _finished(run_dir: pathlib.Path, num_steps: int) -> dict[str, float] | None:
    """The run's evaluation if it is of its final step, else None."""
    path = run_dir / "eval" / "metrics.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if result.get("step") == num_steps else None


def summary(results: dict[str, dict[str, float]]) -> list[str]:
    """One line per method: its first row's metric beside the baseline's."""
    lines = []
    for name, result in results.items():
        demo = DEMOS[name]
        row = demo.rows[0]
        lines.append(f"{name:8s} {row.label}: {_number(result.get(row.metric))} "
                     f"(baseline, {demo.baseline}: {_number(result.get(row.baseline))})")
    return lines


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
    rows = []
    for row in demo.rows:
        ours, base = result.get(row.metric), result.get(row.baseline)
        better = ours is not None and base is not None and (ours > base if row.higher_is_better else ours < base)
        rows.append(f"<tr><td>{html.escape(row.label)}</td><td class='{'win' if better else ''}'>{_number(ours)}"
                    f"</td><td>{_number(base)}</td></tr>")
    figures = "".join(
        f"<figure><img src='{name}/{path}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}"
        f"</figcaption></figure>" for path, caption in demo.figures if (workdir / name / path).is_file())
    command = (f"cxr-jax train --config configs/{name}.py:demo --workdir {name} "
               + " ".join(f"--config.{o}" for o in demo.overrides))
    return (f"<section id='{name}'><h2>{html.escape(demo.title)}</h2><p>{html.escape(demo.what)}</p>\n"
            f"<table><tr><th>metric</th><th>{name}</th><th>{html.escape(demo.baseline)}</th></tr>"
            + "".join(rows) + f"</table>\n<p class='small'>Step {_number(result.get('step'), '.0f')}. "
            f"{html.escape(demo.full)}<br>Reproduce: <code>{html.escape(command)}</code>, then "
            f"<code>cxr-jax evaluate --workdir {name}</code>.</p>\n{figures}</section>")


def _number(value, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}td.win{font-weight:bold;background:#e6f4e6}"
        "img{max-width:100%;border:1px solid #ddd}figure{margin:1em 0}.small{font-size:90%;color:#555}"
        "section{margin-bottom:3em}")
