"""M3, Multi-scale Momentum Muon: Algorithm 1 of NL-L §7.2 (spec §7, decisions.md D19)."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from nestlearn.errors import ConfigError, check_choice
from nestlearn.optim._common import (
    PerParamOptimizer,
    apply_update,
    check_float_dtype,
    check_int,
    check_nonneg,
    check_pos,
    check_unit,
    require_matrices,
)
from nestlearn.optim.muon import orthogonalise
from nestlearn.optim.newton_schulz import NS_COEFFICIENTS, NS_STEPS, validate_ns_args

VARIANTS = ("paper", "ema")


def m3_accumulate(grad: Tensor, state: dict[str, Any], betas: tuple[float, float, float], variant: str) -> None:
    """Write one gradient into the fast memories M⁽¹⁾ and V and into the chunk sum (lines 6–8 of Algorithm 1).

    ``"paper"``: M⁽¹⁾ += β₁g and V += β₂g², running sums as written. ``"ema"`` (the labelled
    deviation of D19): M⁽¹⁾ ← β₁M⁽¹⁾ + (1−β₁)g and V ← β₂V + (1−β₂)g².
    """
    beta1, beta2, _ = betas
    state["chunk_sum"].add_(grad)
    if variant == "paper":
        state["M1"].add_(grad, alpha=beta1)
        state["V"].addcmul_(grad, grad, value=beta2)
    else:
        state["M1"].lerp_(grad, 1.0 - beta1)
        state["V"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)


def m3_denominator(state: dict[str, Any], beta2: float, eps: float, variant: str) -> Tensor:
    """√V + ε of line 10; the ``"ema"`` variant bias-corrects V first.

    M⁽¹⁾ needs no bias correction in either variant: Newton–Schulz divides by its norm.
    """
    v = state["V"]
    if variant == "ema":
        v = v / (1.0 - beta2 ** state["step"])
    return v.sqrt().add_(eps)


def m3_refresh_slow(state: dict[str, Any], beta3: float, period: int, variant: str, ns_steps: int,
                    ns_coefficients: tuple[float, float, float], ns_dtype: torch.dtype) -> None:
    """Fold the finished chunk into the slow memory and re-orthogonalise it (lines 3–4 of Algorithm 1).

    ``"paper"``: M⁽²⁾ += β₃·Σ(gradients of the chunk). ``"ema"``: M⁽²⁾ ← β₃M⁽²⁾ + (1−β₃)·mean gradient.
    Then O⁽²⁾ = NS_T(M⁽²⁾) and the chunk sum restarts from zero.
    """
    if variant == "paper":
        state["M2"].add_(state["chunk_sum"], alpha=beta3)
    else:
        state["M2"].mul_(beta3).add_(state["chunk_sum"], alpha=(1.0 - beta3) / period)
    state["O2"].copy_(orthogonalise(state["M2"], ns_steps, ns_coefficients, ns_dtype))
    state["chunk_sum"].zero_()


class M3(PerParamOptimizer):
    """Multi-scale Momentum Muon (M3), Algorithm 1 of NL-L §7.2, implemented literally (D19).

    For every weight matrix Θ and optimiser step t = 1, 2, …::

        M⁽¹⁾ += β₁ g_t            V += β₂ g_t²            O⁽¹⁾ = NS_T(M⁽¹⁾)
        Θ ← Θ − lr · (O⁽¹⁾ + α O⁽²⁾) / (√V + ε)

    and at the end of every chunk of f = ``slow_period`` steps (after steps f, 2f, …)::

        M⁽²⁾ += β₃ Σ_{chunk} g      O⁽²⁾ = NS_T(M⁽²⁾)

    so O⁽²⁾ is zero during steps 1…f, and during chunk k ≥ 1 it holds the slow memory built from
    the gradients of chunks 0…k−1 (spec §7.2: the refresh "just before step kf+1" happens here at
    the end of step kf, which is the same schedule). ``"ema"`` is D19's labelled deviation; see
    :func:`m3_accumulate` and :func:`m3_refresh_slow`.

    Associative-memory reading (Eq 75, spec §2.8, §6): Adam's accumulators are memories of
    gradients (App. B). M3 replaces the first moment by a two-level Continuum Memory System of the
    independent variant (Eq 74): a fast memory M⁽¹⁾ written every step and a slow memory M⁽²⁾
    written once every f steps with the chunk's gradients, both with the objective ⟨m, g⟩ and plain
    accumulation as inner rule. V is an independent memory at the fast level. Newton–Schulz is an
    even faster inner level that maps each memory to an orthogonal matrix before aggregation by a
    weighted sum with weight α on the slow level.

    Notes (spec §7.2): V is a running sum, so the effective step decays like AdaGrad; dividing by
    √V + ε after orthogonalisation breaks exact orthogonality (as written). Two consequences of
    that division matter in practice [Interp, measured]: the step scales like 1/(gradient scale),
    so ``lr`` must be tuned to the gradient magnitude of the task; and because O⁽¹⁾ is dense, an
    entry whose gradients have all been (near) zero (a dead ReLU, a constant input feature) moves
    by about lr·|O|/ε. With ε = 1e-8 a ReLU MLP on MNIST-5k diverged at every lr that moved it at
    all, while ε = 1e-3 trained (``benchmarks/optimizers.py``). Only matrices are accepted (D20);
    kernels with ndim > 2 are viewed as (out, in·∏kernel); ndim < 2 raises.
    State per parameter: ``M1``, ``M2``, ``V``, ``O2``, ``chunk_sum`` and the integer ``step``.

    Non-finite gradients: a gradient with one inf or NaN entry makes ``step`` raise
    :class:`~nestlearn.errors.NonFiniteGradientError` naming the parameter, before any parameter
    or state changes (Newton–Schulz and the running sum V would keep it for good); skip the batch or lower the learning rate and step again.

    Args:
        params: parameters or param groups (``(name, tensor)`` pairs give better error messages).
        lr: η >= 0. Provisional default (D19); tune per task.
        betas: (β₁, β₂, β₃), each in [0, 1).
        alpha: weight α >= 0 of the slow momentum.
        eps: ε > 0.
        ns_steps: Newton–Schulz steps T.
        ns_coefficients: quintic coefficients (D20).
        slow_period: chunk length f >= 1, in optimiser steps.
        variant: ``"paper"`` (Algorithm 1) or ``"ema"``.
        weight_decay: decoupled decay Θ ← Θ(1 − lr·weight_decay); not part of Algorithm 1, off by default.
        ns_dtype: dtype of the Newton–Schulz iteration (D20: float32; bfloat16 is an option on GPUs).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9),
        alpha: float = 1.0,
        eps: float = 1e-8,
        ns_steps: int = NS_STEPS,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        slow_period: int = 100,
        variant: str = "paper",
        weight_decay: float = 0.0,
        ns_dtype: torch.dtype = torch.float32,
    ) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), alpha=alpha, eps=eps, ns_steps=ns_steps,
                        ns_coefficients=tuple(ns_coefficients), slow_period=slow_period, variant=variant,
                        weight_decay=weight_decay, ns_dtype=ns_dtype)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group after checking its hyper-parameters and that every tensor is a matrix."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_nonneg("M3.lr", group["lr"])
        betas = tuple(group["betas"])
        if len(betas) != 3:
            raise ConfigError("M3.betas", f"must be three numbers (beta1, beta2, beta3), got {group['betas']!r}")
        for i, beta in enumerate(betas):
            check_unit(f"M3.betas[{i}]", beta)
        group["betas"] = betas
        check_nonneg("M3.alpha", group["alpha"])
        check_pos("M3.eps", group["eps"])
        validate_ns_args(group["ns_steps"], group["ns_coefficients"], "M3")
        check_float_dtype("M3.ns_dtype", group["ns_dtype"])
        check_int("M3.slow_period", group["slow_period"], 1)
        check_choice("M3.variant", group["variant"], VARIANTS)
        check_nonneg("M3.weight_decay", group["weight_decay"])
        require_matrices("M3", group)

    def update(self, group: dict[str, Any], param: Tensor, state: dict[str, Any]) -> None:
        """One step of Algorithm 1 for one matrix, then the slow refresh at the end of a chunk."""
        betas, variant = group["betas"], group["variant"]
        grad = param.grad.reshape(param.shape[0], -1)
        if not state:
            state["step"] = 0
            for key in ("M1", "M2", "V", "O2", "chunk_sum"):
                state[key] = torch.zeros_like(grad)
        state["step"] += 1
        m3_accumulate(grad, state, betas, variant)
        fast = orthogonalise(state["M1"], group["ns_steps"], group["ns_coefficients"], group["ns_dtype"])
        denominator = m3_denominator(state, betas[1], group["eps"], variant)
        update = fast.add_(state["O2"], alpha=group["alpha"]).div_(denominator)
        apply_update(param, group, update, -group["lr"])
        if state["step"] % group["slow_period"] == 0:
            m3_refresh_slow(state, betas[2], group["slow_period"], variant, group["ns_steps"],
                            group["ns_coefficients"], group["ns_dtype"])
