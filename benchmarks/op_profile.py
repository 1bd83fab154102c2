"""Where each `paper` step's time goes, op category by category, beside its PyTorch peer's: a Markdown report.

For every case of `benchmarks/cpu.py` (same shapes), one pinned, single-threaded process runs
`cxr-jax bench --profile` (XLA's ops from a `jax.profiler` trace, grouped by `cxr_jax.profiling`), and another
runs the peer's step from `torch_peers.py` under `torch.profiler`, its ATen ops' self time grouped into the
same categories. PyTorch runs a convolution's two gradients in one op, so the table compares them summed:

    python benchmarks/op_profile.py --peers ../shared/bench/torch_peers.py --out benchmarks/op_profile.md
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import pathlib
import runpy
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import cpu  # noqa: E402  (the cases, environment and pinning)
from cxr_jax import profiling  # noqa: E402

# ATen op name fragments -> category; the first that matches wins. Norm layers count with reductions.
TORCH_CATEGORIES = (
    ("conv", "conv forward"),
    ("mm", "matmul"), ("addmm", "matmul"), ("matmul", "matmul"), ("linear", "matmul"),
    ("scaled_dot_product", "matmul"), ("_foreach", "optimizer"),
    ("norm", "reduce / pool"), ("pool", "reduce / pool"), ("sum", "reduce / pool"), ("mean", "reduce / pool"),
    ("max", "reduce / pool"), ("softmax", "reduce / pool"), ("var", "reduce / pool"),
    ("copy", "transpose / copy"), ("clone", "transpose / copy"), ("contiguous", "transpose / copy"),
    ("cat", "pad / slice / concat"), ("pad", "pad / slice / concat"), ("slice", "pad / slice / concat"),
    ("roll", "pad / slice / concat"), ("index", "pad / slice / concat"),
)


def torch_category(op: str) -> str:
    """The category of an ATen op name (e.g. `aten::convolution_backward`)."""
    name = op.split("::")[-1].lower()
    if "conv" in name and "backward" in name:
        return profiling.BACKWARD
    return next((category for fragment, category in TORCH_CATEGORIES if fragment in name), "elementwise")


def profile_torch(peers: str, args: list[str], *, steps: int, warmup: int, threads: int) -> dict:
    """The peer's step under `torch.profiler`: self time per step by category and its costliest ops."""
    import torch

    captured = {}

    class _Parsed(Exception):
        pass

    def grab(parser, *a, **k):  # The peer's own argument parser, defaults and all, then stop its main().
        captured["args"] = parse(parser, *a, **k)
        raise _Parsed

    module = runpy.run_path(peers)
    parse, argparse.ArgumentParser.parse_args = argparse.ArgumentParser.parse_args, grab
    sys.argv = [peers, *args]
    try:
        module["main"]()
    except _Parsed:
        pass
    finally:
        argparse.ArgumentParser.parse_args = parse
    options = captured["args"]
    options.batch = options.batch or module["DEFAULTS"][options.model][0]
    options.size = options.size or module["DEFAULTS"][options.model][1]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    _, make_batch, step, _ = module["BUILDERS"][options.model](options)
    for _ in range(warmup):
        step(make_batch())
    batches = [make_batch() for _ in range(steps)]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for batch in batches:
            step(batch)
    seconds = collections.Counter()
    ops = []
    for event in prof.key_averages():
        per_step, category = event.self_cpu_time_total / 1e6 / steps, torch_category(event.key)
        seconds[category] += per_step
        ops.append((event.key, category, per_step, event.count / steps))
    return {"ops": dict(seconds), "top_ops": sorted(ops, key=lambda o: -o[2])[:15]}


def report(name: str, jax_result: dict, torch_result: dict | None) -> str:
    """One case's section: step times, the category table and each side's costliest ops."""
    lines = [f"## {name}\n", f"cxr_jax {jax_result['step_time_median_s']:.3g} s/step (profiled "
             f"{jax_result['profiled_step_s']:.3g} s)" + (f"; PyTorch's ops {sum(torch_result['ops'].values()):.3g} "
                                                         "s/step" if torch_result else "") + ".\n",
             profiling.table(jax_result["ops"], torch_result and torch_result["ops"])]
    for who, result in (("cxr_jax", jax_result), ("PyTorch", torch_result)):
        if result:
            lines.append(f"Costliest {who} ops (s/step, calls/step):\n")
            lines += [f"- `{op}` ({category}): {seconds:.3f} s, {calls:g}×"
                      for op, category, seconds, calls in result["top_ops"][:8]]
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Profiles each case in its own pinned process (cxr_jax, then its peer) and writes the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cpu.add_arguments(parser, out="benchmarks/op_profile.md", steps=2, what="profiled")
    parser.add_argument("--torch-child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_child is not None:  # Inside the pinned peer process.
        print(json.dumps(profile_torch(args.peers, args.torch_child, steps=args.steps, warmup=args.warmup,
                                       threads=1)))
        return
    core = None if args.core < 0 else args.core
    sections = []
    for name in args.cases.split(","):
        overrides, peer_args = cpu.CASES[name]
        result = cpu.bench_jax(overrides, steps=args.steps, warmup=args.warmup, core=core, threads=1,
                               extra=["--profile"])
        peer = None
        if args.peers and peer_args:
            command = [sys.executable, __file__, "--peers", args.peers, "--steps", str(args.steps), "--warmup",
                       str(args.warmup), "--torch-child", *peer_args]
            proc = subprocess.run(cpu._pinned(command, core), env=cpu._env(1), check=True, capture_output=True,
                                  text=True)
            peer = json.loads(proc.stdout.strip().splitlines()[-1])
        sections.append(report(name, result, peer))
        print(sections[-1], flush=True)
    head = (f"Measured {datetime.date.today()} with `python benchmarks/op_profile.py --steps {args.steps} --warmup "
            f"{args.warmup}` (one thread, pinned to core {core}); seconds per step of each op category.\n\n")
    pathlib.Path(args.out).write_text(head + "".join(sections))


if __name__ == "__main__":
    main()
