"""Every method's `paper` train step on this machine, side by side with its PyTorch peer: a Markdown table.

Each measurement runs in its own process (its own peak RSS), pinned to one core by default (PyTorch with
`--threads 1`), alternating cxr_jax and PyTorch per method, as the README's benchmark section reports them:

    python benchmarks/cpu.py --out benchmarks/cpu.md [--peers ../shared/bench/torch_peers.py] [--steps 3]

The shapes are the issue's: DGM `paper` at 128 px, batch 8, without the AE baseline (the peer's
`dgm --dj concat`); ConVIRT `paper` towers at batch 8 (the peer's `convirt` with the same BERT); LD `paper`
at 128 px, batch 8 (= the peer's `--batch 4` pairs), with and without remat.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# name -> (cxr-jax bench overrides, torch peer arguments or None).
CASES = {
    "dgm": (["configs/dgm.py:paper", "image_size=128", "batch_size=8", "model.ae.enabled=False"],
            ["dgm", "--batch", "8", "--size", "128", "--dj", "concat"]),
    "convirt": (["configs/convirt.py:paper", "batch_size=8", "model.text.hidden_size=256", "model.text.num_layers=4",
                 "model.text.num_heads=4", "model.text.intermediate_size=1024", "model.text.frozen_layers=2",
                 "text.max_length=64"],
                ["convirt", "--batch", "8", "--size", "224", "--bert-layers", "4", "--bert-hidden", "256",
                 "--bert-heads", "4", "--bert-inter", "1024", "--bert-frozen", "2", "--gray"]),
    "ld": (["configs/ld.py:paper", "image_size=128", "batch_size=8", "model.remat=False"],
           ["ld", "--batch", "4", "--size", "128"]),
    "ld (remat)": (["configs/ld.py:paper", "image_size=128", "batch_size=8", "model.remat=True"], None),
}


def _env(threads: int) -> dict[str, str]:
    """Both frameworks quiet and bounded to `threads` (XLA's pool follows the cores `taskset` leaves it)."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS="0", CUDA_VISIBLE_DEVICES="",
                OMP_NUM_THREADS=str(threads), GLIBC_TUNABLES="glibc.malloc.mmap_threshold=33554432:"
                "glibc.malloc.trim_threshold=68719476736")


def _pinned(command: list[str], core: int | None) -> list[str]:
    return (["taskset", "-c", str(core)] if core is not None else []) + command


def bench_jax(overrides: list[str], *, steps: int, warmup: int, core: int | None, threads: int,
              extra: tuple[str, ...] | list[str] = ()) -> dict:
    """`cxr-jax bench` in a fresh process (with `extra` flags, e.g. `--profile`); its JSON result."""
    spec, *rest = overrides
    out = ROOT / "benchmarks" / ".last_bench.json"
    command = [sys.executable, "-m", "cxr_jax", "bench", "--config", spec, *[f"--config.{o}" for o in rest],
               "--steps", str(steps), "--warmup", str(warmup), "--out", str(out), *extra]
    subprocess.run(_pinned(command, core), cwd=ROOT, env=_env(threads), check=True, capture_output=True)
    return json.loads(out.read_text())


def bench_torch(peers: pathlib.Path, args: list[str], *, steps: int, warmup: int, core: int | None,
                threads: int) -> dict:
    """The PyTorch peer's one JSON line."""
    command = [sys.executable, str(peers), *args, "--steps", str(steps), "--warmup", str(warmup),
               "--threads", str(threads)]
    proc = subprocess.run(_pinned(command, core), env=_env(threads), check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[tuple[str, dict, dict | None]]) -> str:
    """Markdown: one row per method, cxr_jax's figures and the peer's step time and peak RSS beside them."""
    head = ("| step | s/step | examples/s | GFLOP/step | GFLOP/s | of matmul peak | XLA step MB | peak RSS MB "
            "| compile s | PyTorch s/step | ratio | PyTorch RSS MB |\n" + "|---" * 12 + "|\n")
    lines = []
    for name, r, t in rows:
        peer = (f"{t['median_step_s']:.3g} | {r['step_time_median_s'] / t['median_step_s']:.2f}× | "
                f"{t['peak_rss_mb']:.0f}") if t else "– | – | –"
        lines.append(f"| {name} | {r['step_time_median_s']:.3g} | {r['examples_per_sec']:.3g} | "
                     f"{r['flops_per_step'] / 1e9:.1f} | {r['achieved_flops_per_sec'] / 1e9:.1f} | "
                     f"{100 * r['fraction_of_peak']:.0f} % | {r.get('xla_step_memory_mb', float('nan')):.0f} | "
                     f"{r['peak_host_memory_mb']:.0f} | {r['compile_time_s']:.1f} | {peer} |")
    return head + "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser, *, out: str, steps: int, what: str) -> None:
    """The flags this script shares with `op_profile.py`: output, peers, steps, warm-up, core and cases."""
    parser.add_argument("--out", default=out, help="the Markdown file to write")
    parser.add_argument("--peers", help="torch_peers.py (e.g. ../shared/bench/torch_peers.py); none: no peer column")
    parser.add_argument("--steps", type=int, default=steps, help=f"{what} steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--core", type=int, default=1, help="pin each process to this core (-1: no pinning)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))


def main() -> None:
    """Runs every case (cxr_jax, then its peer) and writes the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, out="benchmarks/cpu.md", steps=3, what="timed")
    parser.add_argument("--threads", type=int, default=1, help="threads per framework")
    args = parser.parse_args()
    core = None if args.core < 0 else args.core
    rows = []
    for name in args.cases.split(","):
        overrides, peer_args = CASES[name]
        result = bench_jax(overrides, steps=args.steps, warmup=args.warmup, core=core, threads=args.threads)
        peer = (bench_torch(pathlib.Path(args.peers), peer_args, steps=args.steps, warmup=args.warmup, core=core,
                            threads=args.threads) if args.peers and peer_args else None)
        rows.append((name, result, peer))
        print(name, json.dumps({"jax": result.get("step_time_median_s"), "torch": peer and peer["median_step_s"]}),
              flush=True)
    pinned = f"pinned to core {core}" if core is not None else "unpinned"
    text = (f"Measured {datetime.date.today()} with `python benchmarks/cpu.py --steps {args.steps} --warmup "
            f"{args.warmup} --threads {args.threads}` ({pinned}; medians of {args.steps} steps).\n\n" + table(rows))
    pathlib.Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
