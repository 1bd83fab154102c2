"""Training metrics: `W/metrics.jsonl`, TensorBoard events, and a progress bar or plain lines.

Every metric goes to metrics.jsonl and TensorBoard; the bar's postfix (or a plain line per logged step when
stderr is no terminal) shows only the method's key metrics (`Method.key_metrics`).

Evaluations during training add `W/eval/history.jsonl` (one line per evaluated step), TensorBoard scalars under
`eval/` and sample images (TensorBoard `samples`, `W/samples/STEP.png`). On resume each file is cut back to the
resumed step, so a resumed run's records equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import tqdm


class MetricWriter:
    """Writes one JSON line and one set of TensorBoard scalars per logged step (lead host only)."""

    def __init__(self, workdir: str | pathlib.Path, *, start_step: int, num_steps: int, enabled: bool = True,
                 shown: Sequence[str] = ("loss",)):
        self.enabled = enabled
        self.shown = tuple(shown)
        self.num_steps = num_steps
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.eval_path = pathlib.Path(workdir) / "eval" / "history.jsonl"
        self.samples_dir = pathlib.Path(workdir) / "samples"
        self._tb = None
        self._bar = None
        if not enabled:
            return
        truncate_jsonl(self.path, start_step)
        truncate_jsonl(self.eval_path, start_step)
        for png in self.samples_dir.glob("*.png"):  # Drawn after the resumed step: that step runs again.
            if png.stem.isdigit() and int(png.stem) > start_step:
                png.unlink()
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"), purge_step=start_step + 1)
        if sys.stderr.isatty():
            self._bar = tqdm.tqdm(total=num_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """Records `scalars` at `step`."""
        if not self.enabled:
            return
        record = {"step": step, **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in scalars.items():
            self._tb.add_scalar(key, float(value), step)
        self._tb.flush()
        line = format_metrics(record, self.shown)
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix_str(line, refresh=True)
        else:
            pace = f" ({record['step_time']:.3g} s/step)" if "step_time" in record else ""
            print(f"step {step}/{self.num_steps}: {line}{pace}", flush=True)

    def write_eval(self, step: int, metrics: dict[str, float]) -> None:
        """Appends an evaluation's metrics to `eval/history.jsonl` (non-finite as null) and TensorBoard `eval/`."""
        if not self.enabled:
            return
        record = {"step": step, **finite_or_none(metrics)}
        self.eval_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.eval_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in metrics.items():
            self._tb.add_scalar(f"eval/{key}", float(value), step)
        self._tb.flush()
        self._print(f"eval step {step}: " + " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()))

    def write_samples(self, step: int, image: np.ndarray) -> None:
        """A method's sample grid (uint8 [H, W, 3]) as TensorBoard image `samples` and `samples/STEP.png`."""
        if not self.enabled:
            return
        from PIL import Image

        self.samples_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(self.samples_dir / f"{step}.png")
        self._tb.add_image("samples", image, step, dataformats="HWC")
        self._tb.flush()

    def _print(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer and the progress bar."""
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()


def format_metrics(record: dict[str, float], keys: Sequence[str], *, fallback: int = 3) -> str:
    """`k=v` for each of `keys` in `record`; if none is there, its first `fallback` metrics (timing left out)."""
    shown = [k for k in keys if k in record]
    if not shown:
        shown = [k for k in record if k not in ("step", *TIMING_KEYS)][:fallback]
    return " ".join(f"{k}={_fmt(float(record[k]))}" for k in shown)


# What the training loop adds to every logged record besides the method's metrics.
TIMING_KEYS = ("step_time", "examples_per_sec", "compile_time")


def finite_or_none(metrics: dict[str, float]) -> dict[str, float | None]:
    """NaN and infinities as None, so the dict is strict JSON (metrics.json, history.jsonl, checkpoints)."""
    return {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}


def image_grid(rows: Sequence[Sequence[np.ndarray]], *, titles: Sequence[str] = (), gap: int = 2,
               min_side: int = 256) -> np.ndarray:
    """Panels (uint8 [H, W, 3] or gray [H, W], all one size) tiled row by row on white: one sample image.

    Panels smaller than `min_side` are enlarged by whole pixels (nearest), so a 64 px model's panels are read
    at 256 px; `titles` name the columns in a band above them.
    """
    panels = [[np.repeat(p[..., None], 3, -1) if p.ndim == 2 else p for p in row] for row in rows]
    h, w = panels[0][0].shape[:2]
    k = max(1, -(-min_side // max(h, w)))
    cols = max(len(row) for row in panels)
    top = _TITLE_PX if titles else 0
    grid = np.full((top + len(panels) * (k * h + gap) - gap, cols * (k * w + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(panels):
        y = top + i * (k * h + gap)
        for j, panel in enumerate(row):
            big = np.repeat(np.repeat(np.asarray(panel, np.uint8), k, 0), k, 1)
            grid[y:y + k * h, j * (k * w + gap):j * (k * w + gap) + k * w] = big
    if titles:
        from PIL import Image, ImageDraw, ImageFont

        picture = Image.fromarray(grid)
        draw, font = ImageDraw.Draw(picture), ImageFont.load_default(size=_TITLE_PX - 10)
        for j, title in enumerate(titles):
            draw.text((j * (k * w + gap) + 4, 4), title, fill=(0, 0, 0), font=font)
        grid = np.asarray(picture)
    return grid


_TITLE_PX = 26  # Height of `image_grid`'s title band.


def truncate_jsonl(path: pathlib.Path, last_step: int) -> None:
    """Drops records after `last_step`: a resumed run rewrites them, so the log matches an unbroken run."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError):  # A line cut short by a kill.
            continue
    path.write_text("".join(line + "\n" for line in kept))


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file."""
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


def _fmt(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)
