"""The algebra of one CMS chunk: packed weights, a chunk's read and write products, closed-form gradients.

A level's fast weights are packed as ``{"W1": W₁, "Win": W_inᵀ}`` (:func:`pack_weights`); a chunk's
read and write at its chunk-start weights share their matrix products (:func:`chunk_terms`), and its
write Σ_t η_t g_t is returned as factors Eᵀ P (:func:`write_factors`) applied by one fused product.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from nestlearn.memory import MemorySpec, activation, activation_grad, weight_step

Tensor = torch.Tensor
State = dict[str, Tensor]


def apply_linear(z: Tensor, w: Tensor) -> Tensor:
    """z wᵀ for a weight shared by the batch, (rows, cols), or one per sample, (B, rows, cols); z: (B, n, cols)."""
    return F.linear(z, w) if w.dim() == 2 else z @ w.mT


def swiglu_apply(weights: State, z: Tensor) -> Tensor:
    """The SwiGLU body W₁ (SiLU(W₂ z) ⊙ W₃ z) with W₁ = W_down, W₂ = W_gate, W₃ = W_up.

    Args:
        weights: ``{"W1": (..., d, h), "W2": (..., h, d), "W3": (..., h, d)}``.
        z: (..., n, d).
    """
    return apply_linear(F.silu(apply_linear(z, weights["W2"])) * apply_linear(z, weights["W3"]), weights["W1"])


def pack_weights(form: str, weights: State) -> State:
    """A level's state weights -> ``{"W1": W₁, "Win": W_inᵀ}``, the layout of :func:`chunk_terms`.

    W_in is the input matrix W₂ (``"mlp"``) or [W_gate; W_up] stacked by rows (``"swiglu"``), so
    both input products of a SwiGLU level are one matrix product; it is kept transposed, (d, h_in),
    so that its read product z W_inᵀ and its write Σ_t k_t δ_tᵀ take no transposed operand and the
    backward pass's (n, h_in) gradients stay contiguous (strided element-wise work is several
    times slower on CPU). A weight that is one matrix broadcast over the batch (a fresh state's
    initial weights) comes back as that matrix, so its products are ordinary matrix products
    rather than per-sample batched ones.

    Args:
        weights: state names W1, W2(, W3) -> (B, rows, cols).
    """
    def shared(t: Tensor) -> Tensor:
        return t[0] if t.stride(0) == 0 else t

    if form == "mlp":
        return {"W1": shared(weights["W1"]), "Win": shared(weights["W2"]).mT}
    gate, up = shared(weights["W2"]), shared(weights["W3"])
    if gate.dim() != up.dim():
        gate, up = torch.broadcast_tensors(gate, up)
    return {"W1": shared(weights["W1"]), "Win": torch.cat((gate.mT, up.mT), dim=-1)}


def unpack_weights(form: str, packed: State, batch: int) -> State:
    """Inverse of :func:`pack_weights`: state names -> (batch, rows, cols) (shared matrices broadcast)."""
    full = {n: t.expand(batch, *t.shape) if t.dim() == 2 else t for n, t in packed.items()}
    if form == "mlp":
        return {"W1": full["W1"], "W2": full["Win"].mT}
    gate, up = full["Win"].chunk(2, dim=-1)
    return {"W1": full["W1"], "W2": gate.mT, "W3": up.mT}


def hidden_activations(form: str, act: str, pre: Tensor) -> Tensor:
    """The hidden activations from the input product: σ(W₂ z), or SiLU(W_gate z) ⊙ W_up z."""
    if form == "mlp":
        return activation(act, pre)
    gate, up = pre.chunk(2, dim=-1)
    return F.silu(gate) * up


def pre_grad(form: str, act: str, pre: Tensor, d_hidden: Tensor) -> Tensor:
    """∂ℓ/∂(W_in z) from ∂ℓ/∂hidden = W₁ᵀ e (spec §5.8; the SwiGLU closed form [Interp]):
    δ ⊙ σ'(p) (``"mlp"``), or [δ ⊙ up ⊙ SiLU'(gate), δ ⊙ SiLU(gate)] (``"swiglu"``)."""
    if form == "mlp":
        return d_hidden * activation_grad(act, pre)
    gate, up = pre.chunk(2, dim=-1)
    return torch.cat((d_hidden * up * activation_grad("silu", gate), d_hidden * F.silu(gate)), dim=-1)


class ChunkTerms(NamedTuple):
    """What one chunk of a level computes at its chunk-start weights (:func:`chunk_terms`).

    out: (B, n, d) the read's body F(x) − x, or None; pre: (B, n, h_in) the read's input product
    n(x) W_inᵀ, or None; factors: packed weight name -> (E, P), (B, n, rows) and (B, n, cols) of
    the packed layout, with Σ_t η_t g_t = Eᵀ P over the chunk (η already in E), or None.
    """

    out: Tensor | None
    pre: Tensor | None
    factors: dict[str, tuple[Tensor, Tensor]] | None


def write_factors(form: str, act: str, objective: str, weights: State, key: Tensor, pre: Tensor, hidden: Tensor,
                  out: Tensor | None, target: Tensor, eta: Tensor,
                  step: MemorySpec | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """Σ_t η_t g_t of a chunk as factors Eᵀ P, in closed form (spec §5.8), from the keys' input product.

    ℓ_t = ½‖F_θ(k_t) − k_t − y_t‖² (``"l2"``, ``kv``: key n(k), target y = v − k, so the error is
    e = F(k) − v) or −⟨F_θ(x_t) − x_t, y_t⟩ (``"dot"``, ``lss``: key n(x), target y = −u, e = u).
    With hidden a = h(p), p = W_in z: ∇_{W₁} ℓ = e aᵀ, ∇_{W_in} ℓ = (∂ℓ/∂p) zᵀ, ∂ℓ/∂p from
    δ = W₁ᵀ e (:func:`pre_grad`).

    Args:
        weights: packed weights (:func:`pack_weights`); key: (B, n, d); pre: key W_inᵀ (B, n, h_in);
        hidden: h(pre) (B, n, h); out: the body W₁ a at the keys (B, n, d), needed for ``"l2"`` only; target: (B, n, d);
        eta: (B, n, 1).
        step: the level's spec, whose ``step_norm`` and ``write_bound`` give each weight its own step
            from its input (a for W₁, the key for W_in; :func:`nestlearn.memory.weight_step`); None: η.
    """
    e = out - target if objective == "l2" else -target
    d_pre = pre_grad(form, act, pre, e @ weights["W1"])
    if step is None:
        return {"W1": (e * eta, hidden), "Win": (key * eta, d_pre)}
    gain = output_gain(form, act, pre, weights["W1"]) if step.step_norm != "none" else None
    return {"W1": (e * scaled_step(step, eta, e, hidden), hidden),
            "Win": (key * scaled_step(step, eta, d_pre, key, gain), d_pre)}


def scaled_step(spec: MemorySpec, eta: Tensor, e: Tensor, p: Tensor, gain: Tensor | None = None) -> Tensor:
    """(B, n, 1): η normalised by the weight's curvature and scaled by the write bound (design.md S3, S5)."""
    rate, bound = weight_step(spec, eta.squeeze(-1), e, p, gain)
    return (rate if bound is None else rate * bound).unsqueeze(-1)


def output_gain(form: str, act: str, pre: Tensor, w1: Tensor) -> Tensor:
    """‖∂(W₁ h(p))/∂p‖²_F per token, (B, n): the squared gain from W_in's output p to the level's
    output, Σ_j (∂h_j/∂p)² ‖W₁[:, j]‖² (for SwiGLU over both the gate and the up part)."""
    columns = w1.pow(2).sum(-2).unsqueeze(-2)  # (1 | B, 1, h)
    if form == "mlp":
        return (activation_grad(act, pre).pow(2) * columns).sum(-1)
    gate, up = pre.chunk(2, dim=-1)
    return ((up * activation_grad("silu", gate)).pow(2) * columns + F.silu(gate).pow(2) * columns).sum(-1)


def chunk_terms(form: str, act: str, objective: str, weights: State, x_norm: Tensor, key: Tensor,
                target: Tensor, eta: Tensor, read: bool = True, write: bool = True,
                step: MemorySpec | None = None) -> ChunkTerms:
    """A chunk's read and write at one set of weights, with as few matrix products as possible (Eq 71).

    The reads n(x) and the keys share the weights, so their input products are one product over
    the concatenated rows, as are their output products (``l2``); when the keys are the read
    inputs themselves (``lss``: pass the same tensor) the write reuses the read's products.

    Args:
        weights: packed weights (:func:`pack_weights`), shared (rows, cols) or per sample.
        x_norm: (B, n, d) the reads' n(x); key, target: (B, n, d); eta: (B, n, 1) (see
            :func:`write_factors`).
        read, write: which of the two to compute.
        step: per-weight steps, as in :func:`write_factors`.
    """
    shared = key is x_norm
    l2 = objective == "l2"
    both = read and write and not shared
    z = torch.cat((x_norm, key), dim=-2) if both else (x_norm if read else key)
    pre = z @ weights["Win"]
    hidden = hidden_activations(form, act, pre)
    n = x_norm.shape[-2]
    pre_x, pre_k = pre.split(n, dim=-2) if both else (pre, pre)
    hidden_x, hidden_k = hidden.split(n, dim=-2) if both else (hidden, hidden)
    if both and l2:
        out_x, out_k = apply_linear(hidden, weights["W1"]).split(n, dim=-2)
    else:
        out_x = out_k = apply_linear(hidden_x, weights["W1"]) if read or l2 else None
    factors = write_factors(form, act, objective, weights, key, pre_k, hidden_k, out_k, target, eta, step) if write else None
    return ChunkTerms(out_x if read else None, pre_x if read else None, factors)


def add_product(base: Tensor, e: Tensor, p: Tensor, sign: float = 1.0) -> Tensor:
    """base + sign·Eᵀ P as one fused operation; e: (B, n, rows), p: (B, n, cols), base broadcastable.

    For one token (n = 1, decoding) Eᵀ P is an outer product, and addcmul makes one pass over the
    weight where baddbmm copies the base before adding the product (two passes; at one token those
    passes over the (rows, cols) weights are most of a CMS level's cost).
    """
    if e.shape[-2] == 1:
        return torch.addcmul(base, e.mT, p, value=sign)
    return torch.baddbmm(base, e.mT, p, alpha=sign)


def subtract(weights: State, factors: dict[str, tuple[Tensor, Tensor]]) -> State:
    """θ − Eᵀ P per weight (one fused product each; a shared θ broadcasts to the batch)."""
    return {n: add_product(w, *factors[n], sign=-1.0) for n, w in weights.items()}


def accumulate(pending: State | None, factors: dict[str, tuple[Tensor, Tensor]]) -> State:
    """pending + Eᵀ P per weight; None stands for a zero pending write."""
    out = {}
    for n, (e, p) in factors.items():
        out[n] = e.mT @ p if pending is None else add_product(pending[n], e, p)
    return out


def minus(weights: State, pending: State | None) -> State:
    return weights if pending is None else {n: w - pending[n] for n, w in weights.items()}
