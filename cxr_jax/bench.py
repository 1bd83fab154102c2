"""`cxr-jax bench`: compile, warm up and time a method's train step; compare with this machine's peak.

Timings are medians over steps with the same (already prefetched) batch, so they measure the compiled step;
`input_examples_per_sec` times the input pipeline on its own.
"""

from __future__ import annotations

import resource
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections

from cxr_jax.train import loop


def run(config: ml_collections.ConfigDict, *, matmul_size: int = 2048) -> dict[str, float]:
    """Benchmarks `config`'s train step; returns a flat dict of named numbers."""
    s = loop.setup(config)
    state = s.init_fn(jax.random.key(config.seed), s.first_batch)
    t0 = time.perf_counter()
    compiled = s.step_fn.lower(state, s.first_batch).compile()
    compile_time = time.perf_counter() - t0
    flops = _flops(compiled)
    for _ in range(config.bench.warmup_steps):
        state, _ = compiled(state, s.first_batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(config.bench.num_steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, s.first_batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    step_time = statistics.median(times)
    peak = matmul_peak_flops(matmul_size)
    result = {
        "method": config.method,
        "devices": jax.device_count(),
        "batch_size": config.batch_size,
        "image_size": config.image_size,
        "mixed_precision": config.mixed_precision,
        "compile_time_s": compile_time,
        "step_time_median_s": step_time,
        "step_time_min_s": min(times),
        "examples_per_sec": config.batch_size / step_time,
        "flops_per_step": flops,
        "achieved_flops_per_sec": flops / step_time,
        "matmul_peak_flops_per_sec": peak,
        "fraction_of_peak": flops / step_time / peak,
        "input_examples_per_sec": _input_rate(s.batches, config.batch_size, max(config.bench.num_steps, 5)),
        "peak_host_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    return result


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
