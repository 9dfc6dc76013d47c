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


def hidden(spec: MemorySpec, pre: Tensor) -> Tensor:
    """The MLP memory's hidden layer from p = W₂ z: σ(p), or SiLU(p_g) ⊙ p_u for ``"swiglu"``
    (p = [p_g, p_u], the products of the stacked [W_gate; W_up])."""
    if spec.kind != "swiglu":
        return activation(spec.activation, pre)
    gate, up = pre.chunk(2, dim=-1)
    return F.silu(gate) * up


def hidden_grad(spec: MemorySpec, pre: Tensor, d_hidden: Tensor) -> Tensor:
    """∂ℓ/∂p from ∂ℓ/∂h = W₁ᵀ e (spec §5.8): δ ⊙ σ'(p), or [δ ⊙ p_u ⊙ SiLU'(p_g), δ ⊙ SiLU(p_g)]."""
    if spec.kind != "swiglu":
        return d_hidden * activation_grad(spec.activation, pre)
    gate, up = pre.chunk(2, dim=-1)
    return torch.cat((d_hidden * up * activation_grad("silu", gate), d_hidden * F.silu(gate)), dim=-1)


def output_gain(spec: MemorySpec, pre: Tensor, w1: Tensor) -> Tensor:
    """‖∂(W₁ h(p))/∂p‖²_F per token, (..., n): the squared gain from W₂'s output p to the memory's
    output, Σ_j ‖∂h_j/∂p‖² ‖W₁[:, j]‖² (``curvature="gain"``, design.md S3); pre: (..., n, h_in)."""
    columns = w1.pow(2).sum(-2).unsqueeze(-2)  # (..., 1, h)
    if spec.kind != "swiglu":
        return (activation_grad(spec.activation, pre).pow(2) * columns).sum(-1)
    gate, up = pre.chunk(2, dim=-1)
    return (((up * activation_grad("silu", gate)).pow(2) + F.silu(gate).pow(2)) * columns).sum(-1)


def shared_weight(w: Tensor) -> Tensor:
    """A weight broadcast over the batch (a fresh state's view of its initial weights, stride 0) as the
    one matrix it is: its products then fold the batch into the rows of one matrix product instead
    of one product per sample."""
    return w[0] if w.dim() > 2 and w.stride(0) == 0 else w


def memory_apply(spec: MemorySpec, weights: State, z: Tensor) -> Tensor:
    """M(z) with fixed weights (a read with no write, e.g. Titans' retrieval M*(q) [T Eq 15, 21]).

    Args:
        weights: ``{"W": (..., d_out, d_in)}`` or ``{"W1": (..., d_out, h), "W2": (..., h, d_in)}``
            (``"swiglu"``: W₂ (..., 2h, d_in)).
        z: (..., n, d_in).

    Returns:
        (..., n, d_out).
    """
    if spec.kind == "linear":
        return z @ shared_weight(weights["W"]).mT
    out = hidden(spec, z @ shared_weight(weights["W2"]).mT) @ shared_weight(weights["W1"]).mT
    return z + out if spec.residual else out


def boundary_factors(spec: MemorySpec, weights: State, k: Tensor, v: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Closed-form inner gradients at the boundary state, as rank-1 factors g_t = e_t p_tᵀ (spec §5.8).

    Linear: ∇_W ℓ = e kᵀ. MLP with p = W₂k, a = h(p): ∇_{W₁} ℓ = e aᵀ, ∇_{W₂} ℓ = δ kᵀ with
    δ = ∂ℓ/∂p from W₁ᵀ e (:func:`hidden_grad`). e = M_b(k) − v for ``l2`` and −v for ``dot``.

    Args:
        weights: boundary weights (see :func:`memory_apply`).
        k: (..., n, d_in); v: (..., n, d_out).

    Returns:
        weight name -> (E: (..., n, d_out of that weight), P: (..., n, d_in of that weight)).
    """
    return boundary_terms(spec, weights, k, v, self_values=False, q=None)[0]


def boundary_terms(spec: MemorySpec, weights: State, k: Tensor, v: Tensor, self_values: bool,
                    q: Tensor | None, read: bool = False) -> tuple[dict[str, tuple[Tensor, Tensor]], Tensor, Tensor | None]:
    """:func:`boundary_factors`, optionally with self-generated targets, sharing the boundary products.

    Every input that meets the boundary's weights goes through one matrix product per weight: k (the
    gradients), v when the targets are the memory's own output v̂ = M_b(v) (``self_values``, NL-L
    Eq 84) and q when the caller reads from the boundary state (an aligned chunk's X_0, or a read at
    the boundary, ``read``).

    Returns:
        the factors, k W_firstᵀ (..., n, h) and, with q, q W_firstᵀ, or with ``read`` the whole
        read M_b(q) (..., n, d_out); None without q.
    """
    first = "W" if spec.kind == "linear" else "W2"
    rows = [k] + ([v] if self_values else []) + ([q] if q is not None else [])
    sizes = [r.shape[-2] for r in rows]
    pre = (torch.cat(rows, dim=-2) if len(rows) > 1 else k) @ shared_weight(weights[first]).mT
    pres = pre.split(sizes, dim=-2)
    pre_k, pre_q = pres[0], (pres[-1] if q is not None else None)
    l2 = spec.objective == "l2"
    if spec.kind == "linear":
        target = pres[1] if self_values else v
        return {"W": (pre_k - target if l2 else -target, k)}, pre_k, pre_q
    read = read and q is not None
    # The rows whose hidden layer is needed (all but q unless it is read), and those whose output
    # W₁ h(p) is: k for the L2 error, v for self-generated targets, q for a read.
    n_act = len(rows) - (q is not None and not read)
    act_all = hidden(spec, pre.narrow(-2, 0, sum(sizes[:n_act])))
    acts = act_all.split(sizes[:n_act], dim=-2)
    act, w1 = acts[0], shared_weight(weights["W1"])
    wanted = [i for i, w in enumerate([l2] + [True] * self_values + [read] * (q is not None)) if w]
    outs = [None] * len(rows)
    if wanted:
        joined = (act_all if len(wanted) == n_act else acts[wanted[0]] if len(wanted) == 1
                  else torch.cat([acts[i] for i in wanted], dim=-2))
        for i, o in zip(wanted, (joined @ w1.mT).split([sizes[i] for i in wanted], dim=-2)):
            outs[i] = o
    out_k = outs[0]
    if self_values:
        target = v + outs[1] if spec.residual else outs[1]
    else:
        target = v
    e = ((k + out_k if spec.residual else out_k) - target) if l2 else -target
    delta = hidden_grad(spec, pre_k, e @ w1)
    if read:
        pre_q = q + outs[-1] if spec.residual else outs[-1]
    return {"W1": (e, act), "W2": (delta, k)}, pre_k, pre_q
