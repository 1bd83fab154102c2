"""Where a compiled step spends its time: XLA's ops from a `jax.profiler` trace, grouped by what they compute.

XLA:CPU records one trace event per executed HLO instruction of the optimised module (a fusion, a convolution,
a copy). `op_times` runs a compiled step under the profiler and sums those events by category, read from the
module's HLO text: convolutions by role (forward, input gradient, kernel gradient), matmuls, reductions and
pooling, pure layout changes (transposes and copies), pads / slices / concatenations, and elementwise fusions.
That is the evidence `cxr-jax bench --profile` prints when a step is slower than its PyTorch peer: whether
the time goes to XLA's own kernels or to layout work around them.
"""

from __future__ import annotations

import collections
import gzip
import json
import math
import pathlib
import re
import tempfile
import time
from typing import Any

import jax

CATEGORIES = ("conv forward", "conv input gradient", "conv kernel gradient", "matmul", "reduce / pool",
              "transpose / copy", "pad / slice / concat", "elementwise", "other")
BACKWARD = "conv backward (both gradients)"
_LAYOUT = {"transpose", "copy", "reverse", "reshape", "bitcast"}
_SLICING = _LAYOUT | {"pad", "slice", "concatenate", "dynamic-slice", "dynamic-update-slice"}
_IGNORED = {"parameter", "constant", "broadcast", "tuple", "get-tuple-element", "iota"}
_REDUCING = {"reduce", "reduce-window", "select-and-scatter", "scatter", "sort"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\([^=]*?\)|\S+) ([\w\-]+)\((.*)$")
_CONTAINERS = {"while", "call", "conditional"}  # Their bodies' ops have events of their own.
_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{\s*$")


def classify(hlo_text: str) -> dict[str, str]:
    """Each instruction of an optimised HLO module, by name, mapped to one of `CATEGORIES`.

    A fusion's category is that of what it calls: a convolution or matmul anywhere inside wins, then
    reductions; a fusion of layout ops alone is "transpose / copy". A convolution's role: kernel gradient when
    its window covers at least its output's spatial extent (the activation is the window), else input
    gradient under autodiff's `transpose(...)`, else forward.
    """
    computations: dict[str, list[tuple[str, str, str]]] = {}  # name -> [(instruction, opcode, rest)]
    current = None
    for line in hlo_text.splitlines():
        if (header := _COMPUTATION.match(line)) and "=" not in line.split("(")[0]:
            current = computations.setdefault(header.group(1), [])
        elif current is not None and (m := _INSTRUCTION.match(line)):
            name, shape, opcode, rest = m.groups()
            current.append((name, opcode, shape + " " + rest))
    called = {name: _category(body) for name, body in computations.items()}
    result = {}
    for body in computations.values():
        for name, opcode, rest in body:
            if opcode in _CONTAINERS:
                continue
            calls = re.search(r"calls=%?([\w.\-]+)", rest)
            result[name] = called[calls.group(1)] if calls and opcode == "fusion" else _category(
                [(name, opcode, rest)])
    return result


def _category(body: list[tuple[str, str, str]]) -> str:
    """The category of a computation's (or one instruction's) opcodes; `rest` starts with the result shape."""
    opcodes = {opcode for _, opcode, _ in body} - _IGNORED
    for _, opcode, rest in body:
        if opcode == "convolution" or (opcode == "custom-call" and "conv" in rest.lower()):
            return _conv_role(rest)
    if opcodes & {"dot", "custom-call"}:
        return "matmul"
    if opcodes & _REDUCING:
        return "reduce / pool"
    if not opcodes or opcodes <= _LAYOUT:
        return "transpose / copy" if opcodes else "other"
    if opcodes <= _SLICING:
        return "pad / slice / concat"
    if opcodes & {"fusion", "all-reduce", "all-gather", "all-to-all", "send", "recv"}:
        return "other"
    return "elementwise"


def _conv_role(rest: str) -> str:
    window = re.search(r"window=\{size=([\dx]+)", rest)
    labels = re.search(r"dim_labels=\w+->(\w+)", rest)
    shape = re.search(r"^[^\[]*\[([\d,]*)\]", rest)
    window_size = math.prod(int(v) for v in window.group(1).split("x")) if window else 1
    out_spatial = 1
    if labels and shape:  # The output's spatial dims: the digits in its labels, e.g. b01f.
        dims = [int(d) for d in shape.group(1).split(",") if d]
        out_spatial = math.prod(dims[i] for i, c in enumerate(labels.group(1)) if c.isdigit() and i < len(dims))
    if window_size > 1 and window_size >= out_spatial:
        return "conv kernel gradient"
    return "conv input gradient" if "transpose(" in rest else "conv forward"


def op_times(compiled, args: tuple, *, steps: int, chain: bool = True, top: int = 15) -> dict[str, Any]:
    """Runs `compiled(*args)` `steps` times under `jax.profiler` and sums XLA's op events per step.

    With `chain`, each call's first output replaces the first argument (a train step's state). Returns
    `{"seconds_per_step": {category: s}, "top_ops": the `top` costliest [(name, category, s/step, calls/step)],
    "wall_s_per_step": s}`; ops the module does not name (runtime overhead) are not counted.
    """
    categories = classify(compiled.as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        t0 = time.perf_counter()
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(steps):
                out = compiled(*args)
                args = (out[0], *args[1:]) if chain else args
            jax.block_until_ready(out)
        wall = (time.perf_counter() - t0) / steps
        events = _events(pathlib.Path(trace_dir))
    per_op: dict[str, float] = collections.Counter()
    calls: dict[str, int] = collections.Counter()
    for name, seconds in events:
        if name in categories:
            per_op[name] += seconds / steps
            calls[name] += 1
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for name, seconds in per_op.items():
        totals[categories[name]] += seconds
    top = [(name, categories[name], seconds, calls[name] / steps) for name, seconds in
           sorted(per_op.items(), key=lambda kv: -kv[1])[:top]]
    return {"seconds_per_step": totals, "top_ops": top, "wall_s_per_step": wall}


def _events(trace_dir: pathlib.Path) -> list[tuple[str, float]]:
    """(name, seconds) of every complete event in the trace's perfetto JSON."""
    path = next(trace_dir.rglob("*.trace.json.gz"))
    data = json.loads(gzip.open(path).read())
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [(e["name"], e.get("dur", 0.0) / 1e6) for e in events if e.get("ph") == "X"]


def table(ours: dict[str, float], peer: dict[str, float] | None = None) -> str:
    """Markdown: seconds per step by category, with a peer's (e.g. PyTorch's) beside ours where given.

    A row "conv backward" sums the two gradient rows, since frameworks such as PyTorch run both in one op.
    """
    ours = {**ours, BACKWARD: ours.get("conv input gradient", 0.0) + ours.get("conv kernel gradient", 0.0)}
    names = list(CATEGORIES[:3]) + [BACKWARD] + list(CATEGORIES[3:])
    names += [name for name in (peer or {}) if name not in names]
    head = "| category | cxr_jax s/step |" + (" peer s/step |" if peer else "") + "\n"
    head += "|---|---|" + ("---|" if peer else "") + "\n"
    rows = []
    for name in names:
        if ours.get(name) or (peer and peer.get(name)):
            theirs = f" {peer.get(name, 0.0):.3f} |" if peer else ""
            rows.append(f"| {name} | {ours.get(name, 0.0):.3f} |{theirs}")
    total = sum(ours.values()) - ours[BACKWARD]
    rows.append(f"| **all ops** | {total:.3f} |" + (f" {sum(peer.values()):.3f} |" if peer else ""))
    return head + "\n".join(rows) + "\n"
