"""One token of an associative memory: its read and its write applied directly (the decode path).

:func:`memory_scan` cuts a call into chunks and builds, per chunk, the gate segment products, the
C×C coefficient matrices and (with DGD) a triangular solve. For a single token all of that is
scalar bookkeeping around a handful of rank-1 updates, and on CPU its per-operation overhead is
most of the cost of a decode step. :func:`memory_step` applies the same token directly, with the
same closed-form gradients (:func:`~nestlearn.memory.gradients.boundary_terms`) and per-weight steps
(:func:`~nestlearn.memory.ops.weight_step`) as the chunked path. For one weight X with input p, the
token's gradient factors e pᵀ taken at the boundary state, and the step η_X (spec module docstring):

    S ← β S + c e pᵀ                          c = η_X (titans), 1 (scaled), 1 − β (ema); times the write bound's factor
    X ← α X − γ (X k) kᵀ − d S + (1 − α) W₀   d = 1 (titans), η_X (scaled, ema); γ on the DGD weight, else 0
    without momentum: X ← α X − γ (X k) kᵀ − η_X s e pᵀ + (1 − α) W₀   (s the write bound's factor)

with γ = η_X (``gate_form="eq92"``) or α η_X (``"yang"``, design.md S12): the reference's
W(α I − η k kᵀ) − step [NL-L Eq 88], or α W(I − η k kᵀ) − step, written as rank-1 products. The token's
boundary state is the state's ``*_b`` copy unless the token opens a chunk (D4), so a stream decoded
one token at a time gives the chunked forward's outputs and states (tests/test_memory_step.py).
"""

from __future__ import annotations

import torch

from nestlearn.memory import monitor
from nestlearn.memory.chunks import boundary_weights
from nestlearn.memory.gradients import State, boundary_terms, memory_apply
from nestlearn.memory.ops import (
    _check_inputs,
    dgd_coefficient,
    effective_eta,
    memory_scan,
    step_gains,
    stopgrad_writes,
    weight_step,
)
from nestlearn.memory.spec import MemorySpec

Tensor = torch.Tensor


def momentum_coefficients(momentum: str, step: Tensor, beta: Tensor | None) -> tuple[Tensor, Tensor]:
    """(c, d): the gradient enters the momentum with c and the momentum enters the step with d.

    step: a weight's η_X (..., 1, 1); beta: β (..., 1, 1). Titans (η, 1), scaled (1, η), ema (1 − β, η).
    """
    if momentum == "titans":
        return step, torch.ones_like(step)
    if momentum == "scaled":
        return torch.ones_like(step), step
    return 1 - beta, step


def weight_token_update(spec: MemorySpec, x: Tensor, s: Tensor | None, e: Tensor, p: Tensor, step: Tensor,
                        scale: Tensor | None, alpha: Tensor | None, beta: Tensor | None, key: Tensor | None,
                        gamma: Tensor | None, anchor: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """One weight's write for one token: (X, S) -> (X', S') (module docstring).

    Args:
        x: (..., d_out, d_in) the weight; s: its momentum, or None without momentum.
        e: (..., 1, d_out), p: (..., 1, d_in) the gradient's factors at the boundary state.
        step: (..., 1, 1) η_X; scale: (..., 1, 1) the write bound's factor, or None.
        alpha, beta: (..., 1, 1) gates, or None (α ≡ 1; no momentum).
        key: (..., 1, d_in) k on the DGD weight, else None; gamma: (..., 1, 1) its DGD coefficient γ.
        anchor: W₀ (broadcastable to x) under ``retain="initial"``, else None.
    """
    # Each addcmul is one pass over a weight-sized tensor: at one token those passes are the cost.
    grad_e = e if scale is None else e * scale
    new = x if alpha is None else alpha * x
    if key is not None:
        new = torch.addcmul(new, (x @ key.mT) * -gamma, key)  # − γ (X k) kᵀ, with X before the write
    if s is None:
        new = torch.addcmul(new, (grad_e * -step).mT, p)  # − η s e pᵀ
    else:
        c, d = momentum_coefficients(spec.momentum, step, beta)
        s = torch.addcmul(beta * s, (grad_e * c).mT, p)
        new = torch.addcmul(new, -d, s)
    if anchor is not None and alpha is not None:  # without decay (α ≡ 1) nothing returns to W₀
        new = torch.addcmul(new, 1 - alpha, anchor)
    return new, s


def _gate(g: Tensor | None) -> Tensor | None:
    """(..., 1) -> (..., 1, 1), broadcasting against a weight."""
    return None if g is None else g.unsqueeze(-1)


def memory_step(spec: MemorySpec, state: State, q: Tensor, k: Tensor, v: Tensor, eta: Tensor,
                alpha: Tensor | None = None, beta: Tensor | None = None, pos: int = 0, *,
                outputs: bool = True, self_values: bool = False, final_state: bool = True,
                anchor: State | None = None, tag: str = "memory") -> tuple[Tensor | None, State]:
    """:func:`~nestlearn.memory.memory_scan` for a call of exactly one token (same arguments and results).

    q, k: (..., 1, d_in); v: (..., 1, d_out) (d_in with ``self_values``); eta, alpha, beta: (..., 1).
    """
    if q.shape[-2] != 1:
        raise ValueError(f"memory_step reads one token, got {q.shape[-2]}")
    _check_inputs(spec, state, eta, alpha, beta, anchor)
    names = spec.weight_names
    first = "W" if spec.kind == "linear" else "W2"
    shift, state, k, v, eta, alpha, beta, anchor = stopgrad_writes(spec, state, k, v, eta, alpha, beta, anchor)
    eta = effective_eta(spec, eta, alpha)
    cur = {n: state[n] for n in names}
    grad_at = boundary_weights(state, pos, spec.chunk_size, names)

    def read(weights: State) -> Tensor:
        return memory_apply(spec, weights if shift is None else {n: w + shift[n] for n, w in weights.items()}, q)

    out = None
    if outputs and spec.read != "after":
        out = read(cur if spec.read == "before" else grad_at)
    if not (final_state or (outputs and spec.read == "after")):
        return out, {}
    factors, pre_k, _ = boundary_terms(spec, grad_at, k, v, self_values, None)
    gains = step_gains(spec, pre_k, grad_at)
    new, mom = {}, {}
    for n in names:
        e, p = factors[n]
        step, scale = weight_step(spec, eta, e, p, gains.get(n))
        dgd = spec.rule == "dgd" and n == first
        new[n], s = weight_token_update(
            spec, cur[n], state.get(f"{n}_mom"), e, p, _gate(step), _gate(scale), _gate(alpha), _gate(beta),
            k if dgd else None, _gate(dgd_coefficient(spec, step, alpha)) if dgd else None,
            None if anchor is None else anchor[n])
        if s is not None:
            mom[n] = s
    if outputs and spec.read == "after":
        out = read(new)
    if (watch := monitor.active()) is not None:
        watch.observe(tag, pos, new, out, 1)
    if not final_state:
        return out, {}
    # A copy at a chunk end, not an alias: states are saved with safetensors (see memory_scan).
    boundary = {n: w.clone() for n, w in new.items()} if (pos + 1) % spec.chunk_size == 0 else grad_at
    if shift is not None:
        new = {n: w + shift[n] for n, w in new.items()}
        boundary = {n: w + shift[n] for n, w in boundary.items()}
    return out, {**new, **{f"{n}_b": boundary[n] for n in names}, **{f"{n}_mom": mom[n] for n in mom}}


def memory_forward(spec: MemorySpec, state: State, q: Tensor, *args, **kwargs) -> tuple[Tensor | None, State]:
    """:func:`memory_step` for a one-token call, :func:`~nestlearn.memory.memory_scan` otherwise."""
    return (memory_step if q.shape[-2] == 1 else memory_scan)(spec, state, q, *args, **kwargs)
