"""Measurement shared by the benchmark scripts: medians of repeated calls after warm-up, and FLOP counts."""

from __future__ import annotations

import math
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


FLUSH_DENORMAL = True


def cpu_settings(threads: int = 0) -> None:
    """The CPU settings of every benchmark: ``threads`` torch threads (0: torch's default) and
    subnormal floats flushed to zero, as the trainer does by default (``train.flush_denormal``), so
    that a value decaying toward zero never times the CPU's slow subnormal path."""
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(FLUSH_DENORMAL)


class NonFinite(RuntimeError):
    """A benchmarked call produced a NaN or an infinity: its time would measure NaN arithmetic."""


def check_finite(name: str, value: object) -> None:
    """Raise :class:`NonFinite` unless every number in ``value`` is finite.

    ``value`` is what a benchmarked call returns: a tensor, a float, or tuples, lists and dicts of
    them (a step returns its output or loss and its gradients, :func:`training_outputs`); None is
    nothing to check.
    """
    if value is None:
        return
    if isinstance(value, torch.Tensor):
        if not bool(torch.isfinite(value).all()):
            raise NonFinite(f"{name}: a non-finite value in a {tuple(value.shape)} tensor; no time is reported")
    elif isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise NonFinite(f"{name}: non-finite value {value}; no time is reported")
    elif isinstance(value, dict):
        for v in value.values():
            check_finite(name, v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            check_finite(name, v)
    else:
        raise TypeError(f"{name}: cannot check a {type(value).__name__} for finiteness")


def training_outputs(loss: torch.Tensor, module: torch.nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """What a training step returns for :func:`check_finite`: its loss and every parameter's gradient
    (call it after ``backward()`` and before the gradients are zeroed)."""
    return loss.detach(), [p.grad for p in module.parameters() if p.grad is not None]


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 2, name: str = "step") -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls.

    What every call returns is checked with :func:`check_finite`, outside the timed region.
    """
    for _ in range(warmup):
        check_finite(name, fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        check_finite(name, out)
    return statistics.median(times)


def interleaved_medians(steps: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, timed in turns (one round = one call of each), so
    that load changes on a shared machine hit every function alike. Every call's result is checked
    with :func:`check_finite`, outside the timed region."""
    for _ in range(warmup):
        for name, fn in steps.items():
            check_finite(name, fn())
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t0)
            check_finite(name, out)
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
