"""Token-by-token reference of the associative-memory scan: the equations written literally.

This is the oracle for :func:`nestlearn.memory.memory_scan`. It loops over tokens, takes every
inner gradient with autograd at the boundary state of the token's chunk (independently of the closed
forms of spec §5.8), and applies the update literally, including the DGD matrix product
W(α_t I − η_t k_t k_tᵀ) [NL-L Eq 88] and the momentum recurrences [T Eqs 13–14; D9]. It is slow and
meant for tests and float64 checks; outer gradients flow through it with ``create_graph=True``.
"""

from __future__ import annotations

import torch

from nestlearn.memory.ops import State, chunk_bounds, memory_apply
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


def _autograd_grads(spec: MemorySpec, weights: State, k: Tensor, v: Tensor) -> State:
    """∇_W ℓ at ``weights`` for each sample and head (the loss is a sum of independent terms)."""
    with torch.enable_grad():
        leaves = {n: w if w.requires_grad else w.detach().requires_grad_(True) for n, w in weights.items()}
        loss = inner_loss(spec, leaves, k, v)
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True, allow_unused=True)
    return {n: torch.zeros_like(w) if g is None else g for (n, w), g in zip(leaves.items(), grads)}


def memory_scan_reference(spec: MemorySpec, state: State, q: Tensor, k: Tensor, v: Tensor, eta: Tensor,
                          alpha: Tensor | None = None, beta: Tensor | None = None,
                          pos: int = 0, final_state: bool = True) -> tuple[Tensor, State]:
    """Same contract as :func:`nestlearn.memory.memory_scan`, one token at a time (every write is
    computed; without ``final_state`` the state comes back empty).

    For token t (absolute position pos + t) with boundary state M_b of its chunk:
        g_t = ∇ℓ(M_b; k_t, v_t)
        S_t = β_t S_{t−1} + η_t g_t   (titans)  or  β_t S_{t−1} + g_t  (scaled)
        step_t = η_t g_t (none) | S_t (titans) | η_t S_t (scaled)
        W_t = W_{t−1}(α_t I − η_t k_t k_tᵀ) − step_t   on the key-consuming weight with DGD,
        W_t = α_t W_{t−1} − step_t                      otherwise,
        y_t = M_t(q_t) (read "after") or M_{t−1}(q_t) (read "before").
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

    def weights(w: State) -> State:
        if spec.write_grad == "differentiable":
            return w
        return {n: base[n] + (w[n] - base[n].detach()) for n in names}

    cur = {n: state[n] for n in names}
    mom = {n: state[f"{n}_mom"] for n in names} if spec.momentum != "none" else {}
    boundary = {n: state[f"{n}_b"] for n in names}
    ones = torch.ones_like(eta)
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
        grads = _autograd_grads(spec, boundary, kt, vt)
        new = {}
        for n in names:
            if spec.momentum == "none":
                step = eta_t * grads[n]
            elif spec.momentum == "titans":
                mom[n] = beta[..., t, None, None] * mom[n] + eta_t * grads[n]
                step = mom[n]
            else:
                mom[n] = beta[..., t, None, None] * mom[n] + grads[n]
                step = eta_t * mom[n]
            if spec.rule == "dgd" and n == dgd_weight:
                key = kt.mT  # (..., d_in, 1)
                eye = torch.eye(key.shape[-2], dtype=key.dtype, device=key.device)
                new[n] = cur[n] @ (alpha_t * eye - eta_t * (key @ key.mT)) - step
            else:
                new[n] = alpha_t * cur[n] - step
        cur = new
        if spec.read == "after":
            outs.append(memory_apply(spec, weights(cur), qt))
    if not final_state:
        return torch.cat(outs, dim=-2), {}
    if (pos + length) % spec.chunk_size == 0:
        boundary = {n: w.clone() for n, w in cur.items()}
    new_state = {**weights(cur), **{f"{n}_b": w for n, w in weights(boundary).items()},
                 **{f"{n}_mom": mom[n] for n in mom}}
    return torch.cat(outs, dim=-2), new_state
