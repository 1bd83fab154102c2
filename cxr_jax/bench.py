"""`cxr-jax bench`: compile, warm up and time a method's train step; compare with this machine's peak.

Timings are medians over steps with the same (already prefetched) batch, so they measure the compiled step;
`input_examples_per_sec` times the input pipeline on its own. `cxr-jax bench --data` times the input side
alone: reading the source, and each augmentation pipeline in tf.data from memory and streamed from files.
"""

from __future__ import annotations

import resource
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cxr_jax import config as config_lib
from cxr_jax import profiling, registry
from cxr_jax.data import sources
from cxr_jax.train import loop


def run(config: ml_collections.ConfigDict, *, matmul_size: int = 2048, compile_only: bool = False,
        profile: bool = False) -> dict[str, float]:
    """Benchmarks `config`'s train step; returns a flat dict of named numbers.

    `profile` also runs the timed steps again under `jax.profiler` and adds XLA's op time per step by
    category (`ops`) and the costliest ops (`top_ops`), from `profiling.op_times`.

    `compile_only` stops after compiling: FLOPs and XLA's memory plan of one step (arguments, outputs and
    temporaries), which is how a batch too slow to run here is sized. XLA's cost analysis counts a loop body
    once, so with gradient caching (micro-batches in `lax.scan`) `flops_per_step` covers one micro-batch.
    """
    s = loop.setup(config)
    result = {"method": config.method, "devices": jax.device_count(), "batch_size": config.batch_size,
              "image_size": config.image_size, "mixed_precision": config.mixed_precision,
              **time_step(s.init_fn, s.step_fn, s.first_batch, seed=config.seed, warmup=config.bench.warmup_steps,
                          steps=config.bench.num_steps, compile_only=compile_only, profile=profile)}
    if compile_only:
        return result
    peak = matmul_peak_flops(matmul_size)
    result.update({
        "matmul_peak_flops_per_sec": peak,
        "fraction_of_peak": result["achieved_flops_per_sec"] / peak,
        "input_examples_per_sec": _input_rate(s.batches, config.batch_size, max(config.bench.num_steps, 5)),
        "peak_host_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    })
    return result


def time_step(init_fn, step_fn, batch: dict, *, seed: int, warmup: int, steps: int,
              compile_only: bool = False, profile: bool = False) -> dict[str, float]:
    """Compiles `step_fn` for a fresh state (`init_fn`) and `batch`, then times `steps` steps after `warmup`.

    Every step takes the same batch, already on the devices. Returns the compile time, XLA's FLOPs and memory
    plan of one step and, unless `compile_only`, step times (median, min), examples/s and achieved FLOP/s, and
    the device's memory use where the backend reports it (`device_memory`). No data or TensorFlow involved.
    FLOPs (and FLOP/s) are per device: XLA's cost analysis is of the program each device runs.
    """
    state = init_fn(jax.random.key(seed), batch)
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    result = {"compile_time_s": time.perf_counter() - t0, "flops_per_step": _flops(compiled), **_memory(compiled)}
    if compile_only:
        return result
    for _ in range(warmup):
        state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    step_time = statistics.median(times)
    batch_size = jax.tree.leaves(batch)[0].shape[0]
    result.update({"timed_steps": len(times), "step_time_median_s": step_time, "step_time_min_s": min(times),
                   "examples_per_sec": batch_size / step_time,
                   "achieved_flops_per_sec": result["flops_per_step"] / step_time, **device_memory()})
    if profile:  # After the timing, so the profiler's overhead stays out of it.
        ops = profiling.op_times(compiled, (state, batch), steps=steps)
        result.update({"ops": ops["seconds_per_step"], "top_ops": ops["top_ops"],
                       "profiled_step_s": ops["wall_s_per_step"]})
    return result


def device_memory() -> dict[str, float]:
    """The first local device's memory in use now and its peak so far in this process, in MiB ({} on CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    names = {"bytes_in_use": "device_memory_in_use_mb", "peak_bytes_in_use": "device_peak_memory_mb",
             "bytes_limit": "device_memory_limit_mb"}
    return {name: stats[key] / 2**20 for key, name in names.items() if key in stats}


def summary(result: dict) -> str:
    """One line of `run`'s result: step time, throughput, FLOP/s against the matmul peak, memory, compile."""
    parts = [f"{result['method']} batch {result['batch_size']} at {result['image_size']} px"]
    if "step_time_median_s" in result:
        parts += [f"{result['step_time_median_s']:.3g} s/step (median)", f"{result['examples_per_sec']:.3g} examples/s",
                  f"{result['achieved_flops_per_sec'] / 1e9:.3g} GFLOP/s = {100 * result['fraction_of_peak']:.0f} % "
                  "of the matmul peak"]
    if "xla_step_memory_mb" in result:
        parts.append(f"XLA step memory {result['xla_step_memory_mb']:.0f} MB")
    if "peak_host_memory_mb" in result:
        parts.append(f"peak RSS {result['peak_host_memory_mb']:.0f} MB")
    parts.append(f"compile {result['compile_time_s']:.3g} s")
    return ", ".join(parts)


def _memory(compiled) -> dict[str, float]:
    """XLA's memory plan for one step, in MiB: all buffers (donated inputs counted once) and temporaries."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return {"xla_step_memory_mb": total / 2**20, "xla_temp_memory_mb": m.temp_size_in_bytes / 2**20}


def matmul_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matmul FLOP/s: the best of `repeats` timed `jnp.dot`s of size×size matrices."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, a))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(dot(a, a))
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best


def _flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # Older JAX returns one dict per computation.
        analysis = analysis[0]
    return float(analysis.get("flops", float("nan")))


def _input_rate(batches, batch_size: int, num: int) -> float:
    next(batches)
    t0 = time.perf_counter()
    for _ in range(num):
        jax.block_until_ready(next(batches))
    return batch_size * num / (time.perf_counter() - t0)


def _pipelines() -> dict:
    """Per-example tf.data functions of (uint8 image, seed) → dict, by name: decoding, ConVIRT's and LD's views.

    The views take the papers' ranges, from the methods' `paper` configs.
    """
    from cxr_jax.data import augment  # TensorFlow: only where data is built (see `train.method`).

    convirt, ld = (config_lib.method_config(method, "paper").augment for method in ("convirt", "ld"))
    return {
        "decode": lambda image, seed: {"image": augment.to_unit(image)},
        "convirt": lambda image, seed: {"image": augment.convirt_view(augment.to_unit(image), seed, convirt)},
        "ld": lambda image, seed: augment.ld_views(augment.to_unit(image), seed, ld),
    }


def run_data(config: ml_collections.ConfigDict, *, num_batches: int = 20) -> dict[str, float]:
    """Images/s of reading `config.data.train` and of each augmentation pipeline, from memory and streamed."""
    spec, size = config.data.train.copy_and_resolve_references(), config.image_size
    spec.stream = False  # Decode everything once (timed), then time the pipelines from memory and from files.
    t0 = time.perf_counter()
    data = sources.load(spec, image_size=size, seed=config.seed)
    result = {"source": spec.source, "image_size": size, "batch_size": config.batch_size,
              "num_images": len(data["image"]), "load_images_per_sec": len(data["image"]) / (time.perf_counter() - t0)}
    examples, preprocess = registry.build(config).train_data()  # The method's own pipeline, in full.
    result[f"{config.method}_images_per_sec"] = _pipeline_rate(examples, preprocess, config, num_batches)
    pipelines = {name: (lambda e, fn=fn: fn(e["image"], e["seed"])) for name, fn in _pipelines().items()}
    for name, preprocess in pipelines.items():
        result[f"{name}_images_per_sec"] = _pipeline_rate({"image": data["image"]}, preprocess, config, num_batches)
    if "file" in data:  # Sources read from files can also stream them.
        for name in ("decode", "convirt"):
            result[f"stream_{name}_images_per_sec"] = _pipeline_rate({"file": data["file"]}, pipelines[name],
                                                                     config, num_batches)
    return result


def _pipeline_rate(examples: dict[str, np.ndarray], preprocess, config, num_batches: int) -> float:
    """Examples/s of `preprocess` over this host's batches (after 3 warm-up batches for tf.data's autotuning)."""
    from cxr_jax.data import pipeline  # TensorFlow: only where data is built (see `train.method`).

    ds, reader = pipeline.train_dataset(
        examples, preprocess=preprocess, global_batch=config.batch_size,
        seed=config.seed, start_step=0, rows=(0, config.batch_size), prefetch=config.data.prefetch,
        image_size=config.image_size, on_error=config.data.train.on_error)
    batches = pipeline.as_numpy(ds, reader)
    for _ in range(3):
        next(batches)
    t0 = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    rate = config.batch_size * num_batches / (time.perf_counter() - t0)
    batches.close()  # Stop this pipeline's threads before the next one is timed.
    return rate
