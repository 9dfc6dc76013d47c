"""Closed-form pieces of a memory: its activation, its read M(z), and its inner gradients at a boundary state.

Inside a chunk every inner gradient is taken at the chunk's boundary state, so it is a known rank-1
matrix g_t = e_t p_tᵀ per weight (spec §5.8); :func:`boundary_factors` returns the factors (e, p).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nestlearn.memory.spec import MemorySpec

Tensor = torch.Tensor
State = dict[str, Tensor]


def activation(name: str, p: Tensor) -> Tensor:
    """σ(p) of the MLP memory."""
    return F.silu(p) if name == "silu" else F.gelu(p)


def activation_grad(name: str, p: Tensor) -> Tensor:
    """σ'(p) in closed form: SiLU s(1 + p(1 − s)); exact GELU Φ(p) + p φ(p) (spec §5.8)."""
    if name == "silu":
        s = torch.sigmoid(p)
        return s * (1 + p * (1 - s))
    return 0.5 * (1 + torch.erf(p / math.sqrt(2))) + p * torch.exp(-0.5 * p * p) / math.sqrt(2 * math.pi)


def memory_apply(spec: MemorySpec, weights: State, z: Tensor) -> Tensor:
    """M(z) with fixed weights (a read with no write, e.g. Titans' retrieval M*(q) [T Eq 15, 21]).

    Args:
        weights: ``{"W": (..., d_out, d_in)}`` or ``{"W1": (..., d_out, h), "W2": (..., h, d_in)}``.
        z: (..., n, d_in).

    Returns:
        (..., n, d_out).
    """
    if spec.kind == "linear":
        return z @ weights["W"].mT
    out = activation(spec.activation, z @ weights["W2"].mT) @ weights["W1"].mT
    return z + out if spec.residual else out


def boundary_factors(spec: MemorySpec, weights: State, k: Tensor, v: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Closed-form inner gradients at the boundary state, as rank-1 factors g_t = e_t p_tᵀ (spec §5.8).

    Linear: ∇_W ℓ = e kᵀ. MLP with p = W₂k, a = σ(p): ∇_{W₁} ℓ = e aᵀ, ∇_{W₂} ℓ = δ kᵀ with
    δ = (W₁ᵀ e) ⊙ σ'(p). e = M_b(k) − v for ``l2`` and −v for ``dot``.

    Args:
        weights: boundary weights (see :func:`memory_apply`).
        k: (..., n, d_in); v: (..., n, d_out).

    Returns:
        weight name -> (E: (..., n, d_out of that weight), P: (..., n, d_in of that weight)).
    """
    return boundary_terms(spec, weights, k, v, self_values=False, q=None)[0]


def boundary_terms(spec: MemorySpec, weights: State, k: Tensor, v: Tensor, self_values: bool,
                    q: Tensor | None) -> tuple[dict[str, tuple[Tensor, Tensor]], Tensor, Tensor | None]:
    """:func:`boundary_factors`, optionally with self-generated targets, sharing the boundary products.

    Every input that meets the boundary's first weight (W, or W₂ of the MLP) goes through one matrix
    product: k (the gradients), v when the targets are the memory's own output v̂ = M_b(v)
    (``self_values``, NL-L Eq 84) and q when the caller reads from X_0 = M_b (an aligned chunk).

    Returns:
        the factors, k W_firstᵀ (..., n, h) and q W_firstᵀ (None without q).
    """
    first = "W" if spec.kind == "linear" else "W2"
    rows = [k] + ([v] if self_values else []) + ([q] if q is not None else [])
    pre = (torch.cat(rows, dim=-2) if len(rows) > 1 else k) @ weights[first].mT
    pre = pre.split([r.shape[-2] for r in rows], dim=-2)
    pre_k, pre_q = pre[0], (pre[-1] if q is not None else None)
    l2 = spec.objective == "l2"
    if spec.kind == "linear":
        target = pre[1] if self_values else v
        return {"W": (pre_k - target if l2 else -target, k)}, pre_k, pre_q
    act = activation(spec.activation, pre_k)
    w1 = weights["W1"]
    out_k = None
    if self_values:
        act_v = activation(spec.activation, pre[1])
        if l2:
            out_k, out_v = (torch.cat((act, act_v), dim=-2) @ w1.mT).split([k.shape[-2], v.shape[-2]], dim=-2)
        else:
            out_v = act_v @ w1.mT
        target = v + out_v if spec.residual else out_v
    else:
        target = v
        if l2:
            out_k = act @ w1.mT
    e = ((k + out_k if spec.residual else out_k) - target) if l2 else -target
    delta = (e @ w1) * activation_grad(spec.activation, pre_k)
    return {"W1": (e, act), "W2": (delta, k)}, pre_k, pre_q
