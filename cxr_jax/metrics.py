"""Training metrics: `W/metrics.jsonl`, TensorBoard events, and a progress bar or plain lines."""

from __future__ import annotations

import json
import math
import pathlib
import sys
from typing import Any

import tqdm


class MetricWriter:
    """Writes one JSON line and one set of TensorBoard scalars per logged step (lead host only)."""

    def __init__(self, workdir: str | pathlib.Path, *, start_step: int, num_steps: int, enabled: bool = True):
        self.enabled = enabled
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._tb = None
        self._bar = None
        if not enabled:
            return
        truncate_jsonl(self.path, start_step)
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
        line = " ".join(f"{k}={_fmt(v)}" for k, v in record.items() if k != "step")
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix_str(line, refresh=True)
        else:
            print(f"step {step}: {line}", flush=True)

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer and the progress bar."""
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()


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
