"""Token-by-token self-modifying Titans (spec §5.7 written literally): the oracle of
:class:`~nestlearn.layers.self_modifying.SelfModifyingTitans`.

Every memory update is applied per token with the autograd inner gradient of
:func:`nestlearn.memory.inner_gradients` at the boundary state, independently of the fast path's
closed forms and chunked scans. Slow; for float64 tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nestlearn.layers.self_modifying import SelfModifyingTitans, State, merge_heads, repeat_groups
from nestlearn.memory import activation, inner_gradients, inner_loss, memory_apply

Tensor = torch.Tensor


def _conv_token(u: Tensor, weight: Tensor, hist: Tensor) -> tuple[Tensor, Tensor]:
    """One step of the causal depthwise conv: y_t = Σ_j w_j u_{t−3+j}. u (B, C), weight (C, 1, 4), hist (B, 3, C)."""
    window = torch.cat((hist, u[:, None]), dim=1)
    return (window * weight[:, 0].T).sum(1), window[:, 1:]


def self_modifying_reference(layer: SelfModifyingTitans, x: Tensor, state: State | None = None,
                             pos: int = 0) -> tuple[Tensor, State]:
    """Token-by-token self-modifying Titans, spec §5.7 written literally; same contract as ``layer(x, state, pos)``.

    For each token (absolute position a): refresh the boundary copies at multiples of each grid;
    generate q, k, v, η, α and the targets v̂_□ from the boundary states; read o_t = M_memory,t−1(q_t)
    (or M_memory,b(q_t)); then for every memory □ update

        S_□ = β_t S_□ + g_□,   W₂ ← W₂(α_t I − η_t k_t k_tᵀ) − η_t S⁽²⁾_□,   W₁ ← α_t W₁ − η_t S⁽¹⁾_□,

    with g_□ the autograd inner gradient at the boundary state (Eq 88, D6, D9; "gd" drops −η k kᵀ;
    no momentum: S = g). The stability and range switches are applied literally (design.md S1–S5):
    ``momentum_form="ema"`` S_□ = β_t S_□ + (1 − β_t) g_□; ``eigen="signed"`` η → (1 + α_t)η;
    ``step_norm`` η per weight from its input (k for W₂, σ(W₂k) for W₁); ``write_bound`` scales g per
    weight to norm ≤ τ; ``retain="initial"`` adds (1 − α_t)θ_{□,0} to each weight. ``write_grad="stopgrad"`` runs the writes on detached values and reads
    θ₀ + sg(Δ) (D3). Slow; for tests (float64), differentiable with ``create_graph``.
    """
    cfg = layer.cfg
    st = dict(layer.initial_state(x.shape[0]) if state is None else state)
    # The conv cache holds inputs, not writes: never detached.
    cache = st.pop("conv", None)
    stop = cfg.write_grad == "stopgrad"
    groups = layer.groups
    weight_keys = [f"{g}.{n}" for g in groups for n in ("W1", "W2")]
    base = {key: st[key] for key in weight_keys}
    if stop:
        st = {key: t.detach() for key, t in st.items()}

    def visible(key: str, w: Tensor) -> Tensor:
        """θ₀ + sg(Δ) under stopgrad (D3), the weights themselves otherwise."""
        return base[key] + (w - base[key].detach()) if stop else w

    def weights(group: str, suffix: str = "") -> State:
        return {n: visible(f"{group}.{n}", st[f"{group}.{n}{suffix}"]) for n in ("W1", "W2")}

    chunk = {g: cfg.chunk_size_memory if g == "mem" else cfg.chunk_size_other for g in groups}
    momentum = cfg.momentum != "off"
    outs = []
    for t in range(x.shape[1]):
        a = pos + t
        for g in groups:
            if a % chunk[g] == 0:
                for n in ("W1", "W2"):
                    st[f"{g}.{n}_b"] = st[f"{g}.{n}"]
        xt = x[:, t]
        if cfg.conv == "input":
            xt, cache = _conv_token(xt, layer.conv.weight, cache)
            if layer.pointwise is not None:
                xt = layer.pointwise[0](xt)
        xh = xt.view(x.shape[0], layer.n_heads, 1, layer.head_dim)
        raw = layer.static_projections(xt[:, None])
        if layer.proj_names:
            gen = memory_apply(layer.specs["proj"], weights("proj", "_b"), repeat_groups(xh, len(layer.proj_names)))
            for name, part in zip(layer.proj_names, gen.chunk(len(layer.proj_names), dim=1)):
                raw[name] = merge_heads(part)
        u = torch.cat([raw["q"], raw["k"], raw["v"]], dim=-1)[:, 0]
        if cfg.conv == "qkv":
            u, cache = _conv_token(u, layer.conv.weight, cache)
            if layer.pointwise is not None:
                u = torch.cat([lin(p) for lin, p in zip(layer.pointwise, u.chunk(3, dim=-1))], dim=-1)
        if cfg.qkv_activation == "silu":
            u = F.silu(u)
        q, k, v = (p.view(x.shape[0], layer.n_heads, 1, layer.head_dim) for p in u.chunk(3, dim=-1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        if cfg.v_norm == "l2":
            v = F.normalize(v, dim=-1)
        pre = memory_apply(layer.specs["gate"], weights("gate", "_b"), repeat_groups(xh, len(layer.gate_names)))
        eta, alpha = layer.gates(pre.squeeze(-1))
        alpha = torch.ones_like(eta) if alpha is None else alpha
        beta = layer.momentum_gate(xt[:, None])
        mem_read = weights("mem", "_b" if cfg.read == "boundary" else "")
        outs.append(memory_apply(layer.specs["mem"], mem_read, q))
        targets = {g: memory_apply(layer.specs[g], weights(g, "_b"), repeat_groups(v, layer.group_sizes(g)))
                   for g in groups}
        if stop:
            k, eta, alpha = k.detach(), eta.detach(), alpha.detach()
            beta = None if beta is None else beta.detach()
            targets = {g: v_hat.detach() for g, v_hat in targets.items()}
        if cfg.eigen == "signed":
            eta = (1 + alpha) * eta
        for g in groups:
            reps = layer.group_sizes(g)
            kg = repeat_groups(k, reps)
            eta_g, alpha_g = (repeat_groups(s, reps)[..., None] for s in (eta, alpha))  # (B, G·H, 1, 1)
            boundary = {n: st[f"{g}.{n}_b"] for n in ("W1", "W2")}
            grads = inner_gradients(lambda w: inner_loss(layer.specs[g], w, kg, targets[g]), boundary)
            inputs = {"W2": kg, "W1": activation(cfg.activation, kg @ boundary["W2"].mT)}
            steps, etas = {}, {}
            for n in ("W1", "W2"):
                eta_n = eta_g
                if cfg.step_norm != "none":
                    sq = inputs[n].pow(2).sum(-1, keepdim=True)
                    eta_n = eta_g / (1 + eta_g * sq) if cfg.step_norm == "implicit" else eta_g / sq.clamp(min=1.0)
                grad = grads[n]
                if cfg.write_bound > 0:
                    grad = grad * torch.clamp(cfg.write_bound / grad.pow(2).sum((-2, -1), keepdim=True).sqrt(), max=1.0)
                if momentum:
                    beta_g = repeat_groups(beta, reps)[..., None]
                    gain = 1 - beta_g if cfg.momentum_form == "ema" else 1
                    st[f"{g}.{n}_mom"] = beta_g * st[f"{g}.{n}_mom"] + gain * grad
                    steps[n] = eta_n * st[f"{g}.{n}_mom"]
                else:
                    steps[n] = eta_n * grad
                etas[n] = eta_n
            key = kg.mT  # (B, G·H, d/H, 1)
            eye = torch.eye(key.shape[-2], dtype=key.dtype, device=key.device)
            decay = alpha_g * eye - etas["W2"] * (key @ key.mT) if cfg.inner_rule == "dgd" else alpha_g * eye
            st[f"{g}.W2"] = st[f"{g}.W2"] @ decay - steps["W2"]
            st[f"{g}.W1"] = alpha_g * st[f"{g}.W1"] - steps["W1"]
            if cfg.retain == "initial":
                for n in ("W1", "W2"):
                    w0 = layer.initial[g][n].detach() if stop else layer.initial[g][n]
                    st[f"{g}.{n}"] = st[f"{g}.{n}"] + (1 - alpha_g) * w0
    end = pos + x.shape[1]
    for g in groups:
        if end % chunk[g] == 0:
            for n in ("W1", "W2"):
                st[f"{g}.{n}_b"] = st[f"{g}.{n}"].clone()
    new_state = {}
    for g in groups:
        for n in ("W1", "W2"):
            new_state[f"{g}.{n}"] = visible(f"{g}.{n}", st[f"{g}.{n}"])
            new_state[f"{g}.{n}_b"] = visible(f"{g}.{n}", st[f"{g}.{n}_b"])
            if momentum:
                new_state[f"{g}.{n}_mom"] = st[f"{g}.{n}_mom"]
    if cache is not None:
        new_state["conv"] = cache
    o = torch.cat(outs, dim=2)
    return layer.output(o, x), new_state
