"""Measurement shared by the benchmark scripts: medians of repeated calls after warm-up, and FLOP counts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

aten = torch.ops.aten


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(steps: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, timed in turns (one round = one call of each), so
    that load changes on a shared machine hit every function alike."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch's counter knows the CUDA attention kernels but not the CPU one, which would count as zero.
# The formulas count the full score matrix; a causal kernel may skip half of it, so an attention
# model's count is an upper bound on the work it needs.
CPU_SDPA = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward}


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations (a multiply-add counts 2) of the matrix products and attention in one
    call of ``fn``, by torch's FLOP counter; element-wise work is not counted."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as counter:
        fn()
    return counter.get_total_flops()
