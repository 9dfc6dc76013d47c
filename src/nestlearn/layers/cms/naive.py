"""Token-by-token CMS (NL-L Eqs 70–74 written literally): the oracle of :class:`~nestlearn.layers.cms.CMS`.

Each token reads every level with the weights the level had at the start of the token's chunk
and subtracts its step, from the autograd inner gradient of :func:`nestlearn.memory.inner_gradients`
taken at those weights (independently of the fast path's closed forms), from the level's weights;
the chunk-start weights move to the written ones after the last token of each chunk. Slow; for
float64 tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nestlearn.layers.cms import CMS, CMSLevel, State
from nestlearn.memory import activation, inner_gradients, output_gain_autograd

Tensor = torch.Tensor


def cms_reference(cms: CMS, x: Tensor, state: State | None = None, pos: int = 0,
                  u: dict[int, Tensor] | None = None) -> tuple[Tensor, State]:
    """Token-by-token CMS, Eqs 70–74 written literally, with autograd inner gradients.

    The oracle for :meth:`CMS.forward`: each token reads every level with that level's chunk-start
    weights θ_b and subtracts η_t g_t (``kv``: g_t = ∇_θ ½‖F_θ(k_t) − v_t‖²; ``lss``: g_t =
    ∇_θ ⟨F_θ(x_t), u_t⟩ with ``u`` as in :meth:`CMS.forward`; both at θ_b, taken with
    ``torch.autograd.grad`` of the literal loss, independently of the closed forms) from the
    level's weights, which become the next chunk's θ_b after the chunk's last token. A static level (η_max = 0, or the
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
    """Level i reads token ``inp`` (B, 1, d) at absolute position a and updates its entries of ``st`` in place.

    The state is the level memory's (:meth:`CMS.init_state`): the weights W with the writes so far,
    and W_b, the weights at the chunk's start, which the token reads and takes its gradient at.
    """
    level = cms.levels[i]
    size = level.chunk_size
    boundary = {n: st[f"{i}.{n}" if a % size == 0 else f"{i}.{n}_b"] for n in ("W1", "W2")}
    out = _level_output(level, boundary, inp)
    eta = level.eta_scale * torch.sigmoid(level.eta(inp))  # (B, 1, 1): Eq 71's η_t, in units of 1/C(ℓ)
    for name, step in _reference_steps(level, eta, *_inner_grads(level, boundary, inp, u)).items():
        st[f"{i}.{name}"] = st[f"{i}.{name}"] - step
    if (a + 1) % size == 0:
        for n in ("W1", "W2"):
            st[f"{i}.{n}_b"] = st[f"{i}.{n}"]
    if cms.cfg.variant == "nested" and i > 0:
        slow = cms.cfg.chunk_sizes[i - 1]
        init = {n: st[f"{i}.init.{n}" if a % slow == 0 else f"{i}.init.{n}_b"] for n in ("W1", "W2")}
        for name, step in _reference_steps(level, eta, *_inner_grads(level, init, inp, u)).items():
            st[f"{i}.init.{name}"] = st[f"{i}.init.{name}"] - step
        if (a + 1) % slow == 0:
            for n in ("W1", "W2"):
                st[f"{i}.init.{n}_b"] = st[f"{i}.{n}"] = st[f"{i}.{n}_b"] = st[f"{i}.init.{n}"]
    return out


def _hidden(level: CMSLevel, pre: Tensor) -> Tensor:
    """σ(p), or SiLU(p_g) ⊙ p_u for the SwiGLU form (W₂ stacks [W_gate; W_up])."""
    if level.form == "mlp":
        return activation(level.spec.activation, pre)
    gate, up = pre.chunk(2, dim=-1)
    return F.silu(gate) * up


def _level_output(level: CMSLevel, w: State, x: Tensor) -> Tensor:
    """F(x) = x + W₁ σ(W₂ n(x)) (MLP form) or x + W₁ (SiLU(W_gate n(x)) ⊙ W_up n(x)) (SwiGLU form), Eq 70."""
    return x + _hidden(level, level.norm(x) @ w["W2"].mT) @ w["W1"].mT


def _reference_steps(level: CMSLevel, eta: Tensor, grads: State, curvatures: State) -> State:
    """η_W g_W per weight: η (B, 1, 1) divided by max(1, the weight's curvature) (``step_norm``) and g
    scaled to norm ≤ τ (``write_bound``; a SwiGLU level's W_gate and W_up are one weight, W₂)."""
    spec = level.spec
    out = {}
    for name, grad in grads.items():
        rate = eta
        if spec.step_norm != "none":
            rate = eta / curvatures[name].clamp(min=1.0)
        if spec.write_bound > 0:
            norm = grad.pow(2).sum((-2, -1), keepdim=True).sqrt()
            grad = grad * torch.clamp(spec.write_bound / norm, max=1.0)
        out[name] = rate * grad
    return out


def _inner_grads(level: CMSLevel, w: State, x: Tensor, u: Tensor | None) -> tuple[State, State]:
    """Per-sample g for one token x (B, 1, d), by autograd of the literal inner loss
    (:func:`nestlearn.memory.inner_gradients`), and each weight's curvature (B, 1, 1): ‖a‖² for W₁
    (its input, the hidden activations), ‖n(k)‖²·‖∂F/∂p‖²_F for W₂ (its input times the squared
    Jacobian of the level's output with respect to its output p, by autograd: the references' shared
    :func:`nestlearn.memory.output_gain_autograd`).

    ``kv``: ½‖F(k) − v‖² with k = W_k x, v = W_v x; ``lss``: ⟨F(x), u⟩ with u (B, 1, d).
    """
    k = x if level.signal == "lss" else level.key(x)
    z = level.norm(k)

    def loss(weights: State) -> Tensor:
        out = k + _hidden(level, z @ weights["W2"].mT) @ weights["W1"].mT
        return (out * u).sum() if level.signal == "lss" else 0.5 * (out - level.value(x)).pow(2).sum()

    grads = inner_gradients(loss, w)
    key_sq = z.pow(2).sum((-2, -1), keepdim=True)
    return grads, {"W1": _hidden(level, z @ w["W2"].mT).pow(2).sum((-2, -1), keepdim=True),
                   "W2": key_sq * output_gain_autograd(level.spec, w, z)}
