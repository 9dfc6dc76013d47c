"""Token-by-token reference of the associative-memory scan: the equations written literally.

This is the oracle for :func:`nestlearn.memory.memory_scan`. It loops over tokens, takes every
inner gradient with autograd at the boundary state of the token's chunk (independently of the closed
forms of spec §5.8), and applies the update literally, including the DGD matrix product
W(α_t I − η_t k_t k_tᵀ) [NL-L Eq 88] and the momentum recurrences [T Eqs 13–14; D9]. It is slow and
meant for tests and float64 checks; outer gradients flow through it with ``create_graph=True``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from nestlearn.memory import monitor
from nestlearn.memory.chunks import chunk_bounds
from nestlearn.memory.gradients import State, hidden, memory_apply
from nestlearn.memory.spec import MemorySpec

Tensor = torch.Tensor


def inner_loss(spec: MemorySpec, weights: State, k: Tensor, v: Tensor) -> Tensor:
    """Σ over all leading axes of ℓ(M; k, v): ½‖M(k) − v‖² [T Eq 12] or −⟨M(k), v⟩ [NL-L Eq 17].

    Args:
        k: (..., n, d_in); v: (..., n, d_out).
    """
    out = memory_apply(spec, weights, k)
    if spec.objective == "l2":
        return 0.5 * (out - v).pow(2).sum()
    return -(out * v).sum()


def inner_gradients(loss: Callable[[State], Tensor], weights: State) -> State:
    """∇_W loss(W) at W = ``weights`` by autograd: the one inner-gradient helper of every reference.

    The derivative is taken through a zero perturbation added to the weights, so that anything else
    built from the same weights (a self-generated target v̂ = M(v), NL-L Eq 84) stays a constant of
    the inner loss, while the result remains a differentiable function of the weights and inputs for
    the outer loss (``create_graph``). A weight the loss does not use gets a zero gradient.
    """
    with torch.enable_grad():
        zeros = {n: torch.zeros_like(w, requires_grad=True) for n, w in weights.items()}
        value = loss({n: weights[n] + zeros[n] for n in weights})
        grads = torch.autograd.grad(value, list(zeros.values()), create_graph=True, allow_unused=True)
    return {n: torch.zeros_like(weights[n]) if g is None else g for n, g in zip(zeros, grads)}


def output_gain_autograd(spec: MemorySpec, weights: State, k: Tensor) -> Tensor:
    """‖∂(W₁ h(p))/∂p‖²_F at p = W₂ k for one token k (..., 1, d_in), by autograd, one output at a
    time (``curvature="gain"``); (..., 1, 1)."""
    with torch.enable_grad():
        pre = k @ weights["W2"].mT
        pre = pre if pre.requires_grad else pre.detach().requires_grad_(True)
        body = hidden(spec, pre) @ weights["W1"].mT
        gain = sum(torch.autograd.grad(body[..., i].sum(), pre, create_graph=True)[0].pow(2).sum(-1, keepdim=True)
                   for i in range(body.shape[-1]))
    return gain


def memory_scan_reference(spec: MemorySpec, state: State, q: Tensor, k: Tensor, v: Tensor, eta: Tensor,
                          alpha: Tensor | None = None, beta: Tensor | None = None,
                          pos: int = 0, final_state: bool = True, anchor: State | None = None,
                          tag: str = "memory") -> tuple[Tensor, State]:
    """Same contract as :func:`nestlearn.memory.memory_scan`, one token at a time (every write is
    computed; without ``final_state`` the state comes back empty; the monitor sees every token).

    For token t (absolute position pos + t) with boundary state M_b of its chunk, and each weight W
    with input p_W (k_t for the key-consuming weight, h(W₂,b k_t) for W₁):
        η̃_t = η_t (eigen "positive"), (1 + α_t) η_t ("signed"), 2η_t ("signed" with gate_form "yang")
        η_W = η̃_t | η̃_t/(1 + η̃_t c_W) (step_norm "implicit") | η̃_t/max(1, c_W) ("bounded"), with
              c_W = ‖p_W‖², times ‖∂(W₁ h(p))/∂p‖² for W₂ with curvature "gain"
        g_W = s_W ∇_W ℓ(M_b; k_t, v_t),  s_W = min(1, τ/‖∇_W ℓ‖_F) with a write bound τ, else 1
        S_W = β_t S_W + η_W g_W (titans) | β_t S_W + g_W (scaled) | β_t S_W + (1 − β_t) g_W (ema)
        step_W = η_W g_W (none) | S_W (titans) | η_W S_W (scaled, ema)
        R = (1 − α_t) W₀ with retain "initial" (W₀ = ``anchor``), else 0
        W ← W(α_t I − η_W k_t k_tᵀ) + R − step_W   on the key-consuming weight with DGD (gate_form "eq92"),
        W ← α_t W(I − η_W k_t k_tᵀ) + R − step_W   the same with gate_form "yang" (design.md S12),
        W ← α_t W + R − step_W                      otherwise,
        y_t = M_t(q_t) (read "after"), M_{t−1}(q_t) (read "before") or M_{b(t)}(q_t) (read "boundary").
    """
    names = spec.weight_names
    dgd_weight = "W" if spec.kind == "linear" else "W2"
    base = {n: state[n] for n in names}
    if spec.write_grad == "stopgrad":
        # Every fast state is θ₀ + sg(Δ_t) (D3): run the writes on detached inputs, add θ₀ back at reads.
        state = {n: t.detach() for n, t in state.items()}
        k, v, eta = k.detach(), v.detach(), eta.detach()
        alpha = None if alpha is None else alpha.detach()
        beta = None if beta is None else beta.detach()
        anchor = None if anchor is None else {n: w.detach() for n, w in anchor.items()}

    def weights(w: State) -> State:
        if spec.write_grad == "differentiable":
            return w
        return {n: base[n] + (w[n] - base[n].detach()) for n in names}

    cur = {n: state[n] for n in names}
    mom = {n: state[f"{n}_mom"] for n in names} if spec.momentum != "none" else {}
    boundary = {n: state[f"{n}_b"] for n in names}
    ones = torch.ones_like(eta)
    if spec.eigen == "signed":
        eta = eta * (2 * ones if alpha is None or spec.gate_form == "yang" else 1 + alpha)
    alpha = ones if alpha is None else alpha
    length = q.shape[-2]
    starts = {start for start, _ in chunk_bounds(pos, length, spec.chunk_size) if (pos + start) % spec.chunk_size == 0}
    outs = []
    for t in range(length):
        if t in starts:
            boundary = dict(cur)
        kt, vt, qt = k[..., t:t + 1, :], v[..., t:t + 1, :], q[..., t:t + 1, :]
        eta_t, alpha_t = eta[..., t, None, None], alpha[..., t, None, None]
        if spec.read == "before":
            outs.append(memory_apply(spec, weights(cur), qt))
        elif spec.read == "boundary":
            outs.append(memory_apply(spec, weights(boundary), qt))
        grads = inner_gradients(lambda w: inner_loss(spec, w, kt, vt), boundary)
        inputs = {dgd_weight: kt}
        if spec.kind != "linear":
            inputs["W1"] = hidden(spec, kt @ boundary["W2"].mT)
        new = {}
        for n in names:
            eta_n = eta_t
            if spec.step_norm != "none":
                sq = inputs[n].pow(2).sum(-1, keepdim=True)  # (..., 1, 1)
                if spec.curvature == "gain" and n == "W2":
                    sq = sq * output_gain_autograd(spec, boundary, kt)
                eta_n = eta_t / (1 + eta_t * sq) if spec.step_norm == "implicit" else eta_t / sq.clamp(min=1.0)
            g = grads[n]
            if spec.write_bound > 0:
                g_norm = g.pow(2).sum((-2, -1), keepdim=True).sqrt()
                g = g * torch.clamp(spec.write_bound / g_norm, max=1.0)
            if spec.momentum == "none":
                step = eta_n * g
            elif spec.momentum == "titans":
                mom[n] = beta[..., t, None, None] * mom[n] + eta_n * g
                step = mom[n]
            elif spec.momentum == "scaled":
                mom[n] = beta[..., t, None, None] * mom[n] + g
                step = eta_n * mom[n]
            else:
                b_t = beta[..., t, None, None]
                mom[n] = b_t * mom[n] + (1 - b_t) * g
                step = eta_n * mom[n]
            if spec.rule == "dgd" and n == dgd_weight:
                key = kt.mT  # (..., d_in, 1)
                eye = torch.eye(key.shape[-2], dtype=key.dtype, device=key.device)
                if spec.gate_form == "yang":
                    new[n] = alpha_t * (cur[n] @ (eye - eta_n * (key @ key.mT))) - step
                else:
                    new[n] = cur[n] @ (alpha_t * eye - eta_n * (key @ key.mT)) - step
            else:
                new[n] = alpha_t * cur[n] - step
            if spec.retain == "initial":
                new[n] = new[n] + (1 - alpha_t) * anchor[n]
        cur = new
        if spec.read == "after":
            outs.append(memory_apply(spec, weights(cur), qt))
        if (mon := monitor.active()) is not None:
            mon.observe(tag, pos + t, cur, outs[-1])
    if not final_state:
        return torch.cat(outs, dim=-2), {}
    if (pos + length) % spec.chunk_size == 0:
        boundary = {n: w.clone() for n, w in cur.items()}
    new_state = {**weights(cur), **{f"{n}_b": w for n, w in weights(boundary).items()},
                 **{f"{n}_mom": mom[n] for n in mom}}
    return torch.cat(outs, dim=-2), new_state
