"""Token-by-token CMS (NL-L Eqs 70–74 written literally): the oracle of :class:`~nestlearn.layers.cms.CMS`.

Each token reads every level with that level's current weights and adds its step, from the
autograd inner gradient of :func:`nestlearn.memory.inner_gradients` (independently of the fast
path's closed forms), to the level's pending write; a level applies its pending write after the
last token of each of its chunks. Slow; for float64 tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nestlearn.layers.cms import CMS, CMSLevel, State
from nestlearn.memory import activation, inner_gradients

Tensor = torch.Tensor


def cms_reference(cms: CMS, x: Tensor, state: State | None = None, pos: int = 0,
                  u: dict[int, Tensor] | None = None) -> tuple[Tensor, State]:
    """Token-by-token CMS, Eqs 70–74 written literally, with autograd inner gradients.

    The oracle for :meth:`CMS.forward`: each token reads every level with that level's current
    weights, adds η_t g_t (``kv``: g_t = ∇_θ ½‖F_θ(k_t) − v_t‖²; ``lss``: g_t = ∇_θ ⟨F_θ(x_t), u_t⟩
    with ``u`` as in :meth:`CMS.forward`; both taken with ``torch.autograd.grad`` of the literal
    loss, independently of the closed forms) to the level's pending write, and a level applies its
    pending write after the last token of each of its chunks. A static level (η_max = 0, or the
    ``optimizer`` signal) reads its initial weights. Differentiable (``create_graph=True``).
    """
    if state is None:
        state = cms.init_state(x.shape[0], x.device, x.dtype)
    st = dict(state)
    order = list(range(len(cms.levels)))
    if cms.cfg.order == "fast_first":
        order.reverse()
    outs = []
    for t in range(x.shape[1]):
        a = pos + t
        inp = x[:, t:t + 1]
        level_outs = []
        for i in order:
            level = cms.levels[i]
            if level.static:
                out = _level_output(level, dict(level.initial), inp)
            else:
                out = _reference_level_step(cms, i, st, inp, a, None if u is None else u[i][:, t:t + 1])
            if cms.cfg.variant == "independent":
                level_outs.append((i, out))
            else:
                inp = out
        if cms.cfg.variant == "independent":
            weights = torch.softmax(cms.agg, dim=0)
            inp = sum(weights[i] * out for i, out in level_outs)
        outs.append(inp)
    return torch.cat(outs, dim=1), st


def _reference_level_step(cms: CMS, i: int, st: State, inp: Tensor, a: int, u: Tensor | None) -> Tensor:
    """Level i reads token ``inp`` (B, 1, d) at absolute position a and updates its entries of ``st`` in place."""
    level = cms.levels[i]
    nested = cms.cfg.variant == "nested" and i > 0
    suffixes = [n[1:] for n in level.initial]
    w = {f"W{j}": st[f"{i}.W{j}"] for j in suffixes}
    out = _level_output(level, w, inp)
    eta = level.eta_scale * torch.sigmoid(level.eta(inp))  # (B, 1, 1): Eq 71's η_t, in units of 1/C(ℓ)
    for name, grad in _reference_steps(level, eta, *_inner_grads(level, w, inp, u)).items():
        st[f"{i}.G{name[1:]}"] = st[f"{i}.G{name[1:]}"] + grad
    if nested:
        init = {f"W{j}": st[f"{i}.I{j}"] for j in suffixes}
        for name, grad in _reference_steps(level, eta, *_inner_grads(level, init, inp, u)).items():
            st[f"{i}.H{name[1:]}"] = st[f"{i}.H{name[1:]}"] + grad
    if (a + 1) % level.chunk_size == 0:
        for j in suffixes:
            st[f"{i}.W{j}"] = st[f"{i}.W{j}"] - st[f"{i}.G{j}"]
            st[f"{i}.G{j}"] = torch.zeros_like(st[f"{i}.G{j}"])
    if nested and (a + 1) % cms.cfg.chunk_sizes[i - 1] == 0:
        for j in suffixes:
            st[f"{i}.I{j}"] = st[f"{i}.I{j}"] - st[f"{i}.H{j}"]
            st[f"{i}.H{j}"] = torch.zeros_like(st[f"{i}.H{j}"])
            st[f"{i}.W{j}"] = st[f"{i}.I{j}"]
    return out


def _level_output(level: CMSLevel, w: State, x: Tensor) -> Tensor:
    """F(x) = x + W₁ σ(W₂ n(x)) (MLP form) or x + W₁ (SiLU(W₂ n(x)) ⊙ W₃ n(x)) (SwiGLU form), Eq 70."""
    z = level.norm(x)
    if level.form == "mlp":
        return x + activation(level.spec.activation, z @ w["W2"].mT) @ w["W1"].mT
    return x + (F.silu(z @ w["W2"].mT) * (z @ w["W3"].mT)) @ w["W1"].mT


def _reference_steps(level: CMSLevel, eta: Tensor, grads: State, curvatures: State) -> State:
    """η_W g_W per weight: η (B, 1, 1) divided by max(1, the weight's curvature) (``step_norm``) and g
    scaled to norm ≤ τ (``write_bound``; the input weights of a SwiGLU level, W₂ and W₃, share one norm)."""
    spec = level.spec
    out = {}
    for name, grad in grads.items():
        rate = eta
        if spec.step_norm != "none":
            rate = eta / curvatures[name].clamp(min=1.0)
        if spec.write_bound > 0:
            group = [grad] if name == "W1" else [g for n, g in grads.items() if n != "W1"]
            norm = torch.stack([g.pow(2).sum((-2, -1)) for g in group]).sum(0).sqrt()[:, None, None]
            grad = grad * torch.clamp(spec.write_bound / norm, max=1.0)
        out[name] = rate * grad
    return out


def _inner_grads(level: CMSLevel, w: State, x: Tensor, u: Tensor | None) -> tuple[State, State]:
    """Per-sample g for one token x (B, 1, d), by autograd of the literal inner loss
    (:func:`nestlearn.memory.inner_gradients`), and each weight's curvature (B, 1, 1): ‖a‖² for W₁
    (its input, the hidden activations), ‖n(k)‖²·‖∂F/∂p‖²_F for the input weights (their input
    times the squared Jacobian of the level's output with respect to their output p, by autograd).

    ``kv``: ½‖F(k) − v‖² with k = W_k x, v = W_v x; ``lss``: ⟨F(x), u⟩ with u (B, 1, d).
    """
    k = x if level.signal == "lss" else level.key(x)
    z = level.norm(k)

    def hidden(pre: list[Tensor]) -> Tensor:
        return activation(level.spec.activation, pre[0]) if level.form == "mlp" else F.silu(pre[0]) * pre[1]

    def inputs(weights: State) -> list[Tensor]:
        return [z @ weights[n].mT for n in weights if n != "W1"]

    def loss(weights: State) -> Tensor:
        out = k + hidden(inputs(weights)) @ weights["W1"].mT
        return (out * u).sum() if level.signal == "lss" else 0.5 * (out - level.value(x)).pow(2).sum()

    grads = inner_gradients(loss, w)
    with torch.enable_grad():
        pre = [p if p.requires_grad else p.detach().requires_grad_(True) for p in inputs(w)]
        body = hidden(pre) @ w["W1"].mT
        gain = sum(sum(g.pow(2).sum((-2, -1), keepdim=True)
                       for g in torch.autograd.grad(body[..., i].sum(), pre, create_graph=True))
                   for i in range(body.shape[-1]))
    key_sq = z.pow(2).sum((-2, -1), keepdim=True)
    return grads, {n: hidden(pre).pow(2).sum((-2, -1), keepdim=True) if n == "W1" else key_sq * gain for n in w}
