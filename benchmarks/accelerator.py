r"""Each method's `paper` train step on this machine's accelerators, fp32 and bf16: step time, FLOP/s and MFU.

For every method (DGM, ConVIRT, LD) and precision (fp32; bf16 = the config's `mixed_precision`, bf16 compute
with fp32 parameters), the method is built on a mesh over all local devices (`registry.build`), its state is
initialised and its step jitted as the training loop does (`train.loop.jitted`), and `cxr_jax.bench.time_step`
compiles and times it on one random batch (`Method.synthetic_batch`) kept on the devices. No data set and no
TensorFlow: the tf.data side (`cxr_jax/data`) is never imported. Each case prints one JSON line; `--out` also
writes a Markdown table (`--jsonl` the lines).

    python -m benchmarks.accelerator --out benchmarks/accelerator.md [--methods dgm,ld] [--precision bf16]
        [--steps 10] [--warmup 2] [--batch-size 64] [--image-size 256] [--config-override model.remat=False]

On a GPU machine without ml_collections (the configs are ConfigDicts): ml_collections is one pure-Python wheel
of 77 kB, and what it needs (absl-py, PyYAML) comes with chex and flax. Fetch it here once into the git-ignored
`.whl/` (`pip download --no-deps -d .whl ml_collections==1.1.0`), carry `.whl` along and put the wheel itself
on the path (Python imports pure-Python packages from a zip); from the repository root, nothing to install:

    PYTHONPATH=.whl/ml_collections-1.1.0-py3-none-any.whl python3 -m benchmarks.accelerator \
        --out $OUT/accelerator.md --jsonl $OUT/accelerator.jsonl

What is measured:
- Step time: the median of `--steps` steps after `--warmup` (the config's `bench.*` by default), each waited for.
- FLOPs: XLA's cost analysis of the compiled step, as `cxr-jax bench` reports it: per device (the program each
  device runs; on 2 devices half of 1 device's), and a `lax.scan` body counted once (with ConVIRT's
  `train.grad_cache_chunks` it covers one micro-batch).
- MFU: achieved FLOP/s per device (FLOPs / step time) over one device's peak: `--peak-tflops` (one number for all cases,
  or per precision: `bf16=989,fp32=495`), else the device kind's dense peak from NVIDIA's datasheets (`PEAKS`:
  H100/H200 SXM bf16 989.4 and TF32 494.7 TFLOP/s, plain FP32 67). fp32 cases are rated against TF32:
  XLA's default precision runs float32 matmuls and convolutions as TF32 on Ampere and later chips (plain FP32
  only with `JAX_DEFAULT_MATMUL_PRECISION=highest`, then the FP32 peak is used). This workplace measured
  769–798 TFLOP/s for a bf16 8192³ matmul on an H200 (≈ 80 % of 989): the practical ceiling is below the
  datasheet's. Unknown kinds (CPU) get no MFU unless `--peak-tflops` is given.
- Memory: XLA's plan for one step (arguments + outputs + temporaries − donated) and, where the backend reports
  it, the device's bytes in use after the timed steps and its peak so far in this process (cases run in turn:
  a later case's peak includes the earlier ones' if they were larger).

Synthetic inputs: random images (and token ids, LD's turns and mixup weights) of the config's shapes; random
initial weights. The paper configs load no weight files (`model.image_weights`, `model.text_weights` are None).
ConVIRT's `paper` trains its WordPiece vocabulary on `../shared/data/iu_reports`, absent here: without
`text.vocab_file` the benchmark writes a vocab.txt of `text.vocab_size` made-up words (the same embedding table
as the trained vocabulary) and uses it. A case that fails (e.g. out of memory) is reported and the others run;
the exit status is then 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
import tempfile
import traceback

import jax

from cxr_jax import bench, parallel, registry
from cxr_jax import config as config_lib
from cxr_jax.data import text
from cxr_jax.train import loop

METHODS = ("dgm", "convirt", "ld")
PRECISIONS = ("fp32", "bf16")

# Dense peak TFLOP/s per chip (no sparsity), from NVIDIA's datasheets: device-kind substring → {precision: peak}.
# First match wins (more specific names first). 'tf32' rates fp32 cases under XLA's default matmul precision.
PEAKS = {
    "H200 NVL": {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0},
    "H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 67.0},  # SXM5 ("NVIDIA H100 80GB HBM3").
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
}


def peak_flops(precision: str, device_kind: str, override: dict[str, float]) -> tuple[float | None, str]:
    """One device's peak FLOP/s for a `precision` case, and where it came from ('' when unknown)."""
    if precision in override:
        return override[precision] * 1e12, "--peak-tflops"
    kind = next((k for k in PEAKS if k in device_kind), None)
    if kind is None:
        return None, ""
    exact = str(getattr(jax.config, "jax_default_matmul_precision", None) or "").lower() in ("highest", "float32")
    column = "bf16" if precision == "bf16" else "fp32" if exact else "tf32"
    return PEAKS[kind][column] * 1e12, f"{kind} {column} datasheet"


def parse_peaks(spec: str | None) -> dict[str, float]:
    """`--peak-tflops`: '989' (every precision) or 'bf16=989,fp32=495' → {precision: TFLOP/s}."""
    if not spec:
        return {}
    if "=" not in spec:
        return dict.fromkeys(PRECISIONS, float(spec))
    pairs = (item.split("=", 1) for item in spec.split(","))
    peaks = {name.strip(): float(value) for name, value in pairs}
    unknown = set(peaks) - set(PRECISIONS)
    if unknown:
        raise SystemExit(f"--peak-tflops: unknown precision {sorted(unknown)}; expected {', '.join(PRECISIONS)}")
    return peaks


def case_config(method: str, precision: str, args: argparse.Namespace, scratch: pathlib.Path):
    """The `args.variant` config of `method` at `precision`, with the command line's sizes and overrides."""
    config = config_lib.method_config(method, args.variant)
    config.mixed_precision = precision == "bf16"
    if args.batch_size:
        config.batch_size = args.batch_size
    if args.image_size:
        config.image_size = args.image_size
    config = config_lib.apply_overrides(config, args.config_override)
    config_lib.validate(config, source=f"configs/{method}.py:{args.variant}")
    if config.method == "convirt" and not config.text.vocab_file and not config.model.text_weights:
        config.text.vocab_file = str(synthetic_vocab(config.text.vocab_size, scratch))
    return config


def synthetic_vocab(size: int, directory: pathlib.Path) -> pathlib.Path:
    """A BERT-style vocab.txt of `size` tokens: the special tokens, then made-up words."""
    path = directory / f"vocab_{size}.txt"
    words = [*text.SPECIALS, *(f"word{i}" for i in range(size - len(text.SPECIALS)))]
    path.write_text("\n".join(words) + "\n", encoding="utf-8")
    return path


def run_case(config, mesh: jax.sharding.Mesh, *, steps: int, warmup: int) -> dict:
    """`bench.time_step` of `config`'s train step on a synthetic batch sharded over `mesh`."""
    parallel.check_batch_size(config.batch_size, mesh)
    method = registry.build(config, mesh)
    batch = parallel.from_full(method.synthetic_batch(config.batch_size, config.seed), mesh)
    init_fn, step_fn, _ = loop.jitted(config, method, mesh, batch)
    return bench.time_step(init_fn, step_fn, batch, seed=config.seed, warmup=warmup, steps=steps)


def measure(method: str, precision: str, args: argparse.Namespace, mesh, peaks: dict[str, float],
            scratch: pathlib.Path) -> dict:
    """One case's JSON record: what was run, `run_case`'s numbers and MFU, or the error that stopped it."""
    device_kind = mesh.devices.flat[0].device_kind
    record = {"method": method, "precision": precision, "variant": args.variant, "device_kind": device_kind,
              "devices": mesh.devices.size}
    try:
        config = case_config(method, precision, args, scratch)
        record.update(batch_size=config.batch_size, image_size=config.image_size)
        steps = config.bench.num_steps if args.steps is None else args.steps
        warmup = config.bench.warmup_steps if args.warmup is None else args.warmup
        record.update(run_case(config, mesh, steps=steps, warmup=warmup))
    except Exception as e:  # Report the case (out of memory, say) and go on with the others.
        traceback.print_exc(file=sys.stderr)
        record["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        return record
    peak, source = peak_flops(precision, device_kind, peaks)
    if peak and "achieved_flops_per_sec" in record:  # Both per device.
        record.update(peak_flops_per_sec=peak, peak_source=source, mfu=record["achieved_flops_per_sec"] / peak)
    return record


def table(records: list[dict]) -> str:
    """Markdown: one row per case."""
    head = ("| method | precision | batch | px | s/step | examples/s | GFLOP/step/device | TFLOP/s/device | MFU "
            "| peak TFLOP/s "
            "| compile s | XLA step MiB | device peak MiB |\n" + "|---" * 13 + "|\n")
    rows = []
    for r in records:
        name = f"| {r['method']} | {r['precision']} | {r.get('batch_size', '–')} | {r.get('image_size', '–')} |"
        if "error" in r:
            rows.append(f"{name} failed: {r['error'][:200].replace('|', '/')} |" + " |" * 8)
            continue
        mfu = f"{100 * r['mfu']:.1f} %" if "mfu" in r else "–"
        rows.append(f"{name} {_fmt(r, 'step_time_median_s')} | {_fmt(r, 'examples_per_sec')} | "
                    f"{_fmt(r, 'flops_per_step', 1e-9, '.1f')} | {_fmt(r, 'achieved_flops_per_sec', 1e-12)} | {mfu} | "
                    f"{_fmt(r, 'peak_flops_per_sec', 1e-12, '.1f')} | {_fmt(r, 'compile_time_s', spec='.1f')} | "
                    f"{_fmt(r, 'xla_step_memory_mb', spec='.0f')} | {_fmt(r, 'device_peak_memory_mb', spec='.0f')} |")
    return head + "\n".join(rows) + "\n"


def _fmt(record: dict, key: str, scale: float = 1.0, spec: str = ".3g") -> str:
    return format(record[key] * scale, spec) if key in record else "–"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS))
    parser.add_argument("--precision", default=",".join(PRECISIONS), help="comma-separated: fp32, bf16")
    parser.add_argument("--variant", default="paper", help="the configs' variant (default paper; smoke for tests)")
    parser.add_argument("--steps", type=int, help="timed steps (default: the config's bench.num_steps)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: bench.warmup_steps)")
    parser.add_argument("--batch-size", type=int, help="global batch size instead of the config's")
    parser.add_argument("--image-size", type=int, help="image size instead of the config's")
    parser.add_argument("--config-override", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every case (repeatable), e.g. model.remat=False")
    parser.add_argument("--peak-tflops", help="peak TFLOP/s per device: '989', or 'bf16=989,fp32=495'")
    parser.add_argument("--out", help="write the Markdown table here")
    parser.add_argument("--jsonl", help="write the JSON lines here too")
    args = parser.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.precision = [p for p in args.precision.split(",") if p]
    for name, given, known in (("--methods", args.methods, METHODS), ("--precision", args.precision, PRECISIONS)):
        if not given or set(given) - set(known):
            parser.error(f"{name}: expected a comma-separated subset of {', '.join(known)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs every case, prints its JSON line, writes the table; 1 if a case failed."""
    args = parse_args(argv)
    peaks = parse_peaks(args.peak_tflops)
    mesh = parallel.make_mesh(jax.local_devices())
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        for method in args.methods:
            for precision in args.precision:
                record = measure(method, precision, args, mesh, peaks, pathlib.Path(scratch))
                print(json.dumps(record), flush=True)
                records.append(record)
    device = f"{mesh.devices.size} × {mesh.devices.flat[0].device_kind}"
    command = " ".join(["python -m benchmarks.accelerator", *(argv if argv is not None else sys.argv[1:])])
    report = (f"Measured {datetime.date.today()} on {device} (JAX {jax.__version__}) with `{command}`: medians of "
                "the timed steps on one synthetic batch.\n\n" + table(records))
    if args.out:
        pathlib.Path(args.out).write_text(report)
    if args.jsonl:
        pathlib.Path(args.jsonl).write_text("".join(json.dumps(r) + "\n" for r in records))
    print(report)
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
