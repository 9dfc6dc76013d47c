"""Continuum Memory System (CMS): a chain of MLP levels, level ℓ written once every C(ℓ) tokens.

NL-L §7.1, Eqs 70–74 (spec §6); decisions D13–D16. Level ℓ is the residual MLP

    F_ℓ(x) = x + W_out σ(W_in n(x))          (n: RMSNorm with a slow gain; D15)

whose weights (W_in, W_out) are a per-sample fast state (D2) starting from meta-learned initial
values. Eq 71 with the ``kv`` update signal (D13): inside a chunk of C(ℓ) tokens the level reads with
its chunk-start weights θ_b; at the chunk's end it writes

    θ ← θ − Σ_{t ∈ chunk} η_t ∇_θ ½‖F_θb(k_t) − v_t‖²,    k_t = W_k x_t, v_t = W_v x_t,
    η_t = η_max · sigmoid(w_ηᵀ x_t + b_η) / (C(ℓ) · d),

so a write only affects later chunks (causal by construction). The 1/(C·d) factor [Interp; D13
leaves the values of η open] keeps the summed step of a chunk scale-free: the C gradients of a
chunk are taken at the same point and each grows with ‖n(k)‖² = d, so an unscaled η that works for
one (C, d) diverges for another. This is the associative-memory
primitive of :mod:`nestlearn.memory` with objective L2 and plain GD: a level is the non-residual MLP
memory applied to n(k) with target v − k, and its inner gradients are the closed forms of spec §5.8
(:func:`nestlearn.memory.boundary_factors`).

Variants (``variant``): ``"sequential"`` (Eq 73, the chain of Eq 70), ``"nested"`` (Eq 72: level
s+1 is re-initialised at every chunk boundary of level s from an initial state that is itself a fast
state, written at level s's frequency with level s+1's own signal and rule [Interp, D15]) and
``"independent"`` (Eq 74: levels read the same input; a softmax-weighted sum aggregates them).
Levels are listed slowest first (D14); ``order="fast_first"`` reverses the application order only.

Chunks are aligned to absolute positions, and a partial chunk's pending write is carried in the
state, so a stream processed in segments equals one pass. The other update signals of D13
(``lss``, ``optimizer``) are not implemented yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nestlearn.errors import ConfigError, check_choice, check_positive
from nestlearn.layers.norm import RMSNorm
from nestlearn.memory import MemorySpec, activation, boundary_factors, chunk_bounds

Tensor = torch.Tensor
State = dict[str, Tensor]

VARIANTS = ("sequential", "nested", "independent")
ORDERS = ("slow_first", "fast_first")
SIGNALS = ("kv",)
ACTIVATIONS = ("silu", "gelu")


@dataclass
class CMSConfig:
    """Attributes (D13–D16):
        chunk_sizes: C(ℓ) per level in tokens, slowest first, strictly decreasing.
        variant: ``"sequential"``, ``"nested"`` or ``"independent"``.
        order: ``"slow_first"`` or ``"fast_first"`` application order of the chain.
        signal: update signal; ``"kv"`` (local key-value regression).
        hidden_mult: hidden width of each level as a multiple of d.
        activation: σ, ``"silu"`` or ``"gelu"``.
        eta_max: bound of the level learning rate in units of 1/(C·d) (see the module docstring); 0 freezes every level.
        eta_init: initial η_t as a fraction of ``eta_max`` (sets b_η).
    """

    chunk_sizes: tuple[int, ...] = (512, 128, 32)
    variant: str = "sequential"
    order: str = "slow_first"
    signal: str = "kv"
    hidden_mult: int = 4
    activation: str = "silu"
    eta_max: float = 1.0
    eta_init: float = 0.1

    def validate(self, prefix: str = "cms") -> None:
        if not self.chunk_sizes:
            raise ConfigError(f"{prefix}.chunk_sizes", "needs at least one level")
        for c in self.chunk_sizes:
            check_positive(f"{prefix}.chunk_sizes", c)
        if any(a <= b for a, b in zip(self.chunk_sizes, self.chunk_sizes[1:])):
            raise ConfigError(f"{prefix}.chunk_sizes", f"must be strictly decreasing (slowest first), got {self.chunk_sizes}")
        check_choice(f"{prefix}.variant", self.variant, VARIANTS)
        check_choice(f"{prefix}.order", self.order, ORDERS)
        check_choice(f"{prefix}.signal", self.signal, SIGNALS)
        check_positive(f"{prefix}.hidden_mult", self.hidden_mult)
        check_choice(f"{prefix}.activation", self.activation, ACTIVATIONS)
        check_positive(f"{prefix}.eta_max", self.eta_max, allow_zero=True)
        if not 0 < self.eta_init < 1:
            raise ConfigError(f"{prefix}.eta_init", f"must lie in (0, 1), got {self.eta_init}")
        if self.variant == "nested":
            for slow, fast in zip(self.chunk_sizes, self.chunk_sizes[1:]):
                if slow % fast:
                    raise ConfigError(f"{prefix}.chunk_sizes", f"the nested variant needs each chunk size to divide "
                                      f"the slower one, got {fast} and {slow}")


class CMSLevel(nn.Module):
    """The slow parameters of one level: norm gain, initial fast weights, k/v projections, η gate."""

    def __init__(self, d_model: int, hidden: int, chunk_size: int, cfg: CMSConfig, eps: float = 1e-6):
        super().__init__()
        self.chunk_size = chunk_size
        self.eta_scale = cfg.eta_max / (chunk_size * d_model)
        self.eta_init = cfg.eta_init
        self.spec = MemorySpec(kind="mlp", objective="l2", rule="gd", momentum="none", chunk_size=chunk_size,
                               activation=cfg.activation, residual=False, field="cms")
        self.norm = RMSNorm(d_model, eps)
        self.w_in = nn.Parameter(torch.empty(hidden, d_model))
        self.w_out = nn.Parameter(torch.empty(d_model, hidden))
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model, bias=False)
        self.eta = nn.Linear(d_model, 1)
        self.reset_special_parameters()

    def reset_special_parameters(self) -> None:
        nn.init.normal_(self.w_in, std=1.0 / math.sqrt(self.w_in.shape[1]))
        nn.init.normal_(self.w_out, std=0.02 / math.sqrt(self.w_out.shape[1] / self.w_out.shape[0]))
        nn.init.zeros_(self.eta.weight)
        nn.init.constant_(self.eta.bias, math.log(self.eta_init / (1 - self.eta_init)))

    def read(self, weights: State, x: Tensor, x_norm: Tensor | None = None) -> Tensor:
        """F(x) with fixed weights: x (B, n, d) -> (B, n, d); ``x_norm`` is n(x) if already computed."""
        x_norm = self.norm(x) if x_norm is None else x_norm
        h = activation(self.spec.activation, x_norm @ weights["W2"].mT)
        return x + h @ weights["W1"].mT

    def write_inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The parts of the write that do not depend on the fast weights, for all tokens of x (B, n, d).

        Returns:
            n(k): (B, n, d), the inner key; v − k: (B, n, d), the target of the non-residual MLP;
            η: (B, n, 1).
        """
        k, v = self.key(x), self.value(x)
        return self.norm(k), v - k, self.eta_of(x).unsqueeze(-1)

    def write_sum(self, weights: State, key: Tensor, target: Tensor, eta: Tensor) -> State:
        """Σ_t η_t ∇_θ ½‖F_θ(k_t) − v_t‖² over a chunk, at ``weights``, in closed form (spec §5.8)."""
        factors = boundary_factors(self.spec, weights, key, target)
        return {name: (e * eta).mT @ p for name, (e, p) in factors.items()}

    def eta_of(self, x: Tensor) -> Tensor:
        """η_t: (B, n, d) -> (B, n)."""
        return self.eta_scale * torch.sigmoid(self.eta(x)).squeeze(-1)


class CMS(nn.Module):
    """A Continuum Memory System over width ``d_model`` (see the module docstring).

    State keys per level i: ``{i}.W1``, ``{i}.W2`` (fast W_out, W_in), ``{i}.G1``, ``{i}.G2`` (the
    pending write of the current partial chunk) and, in the nested variant for levels i ≥ 1,
    ``{i}.I1``, ``{i}.I2``, ``{i}.H1``, ``{i}.H2`` (the fast initial state and its pending write).
    """

    def __init__(self, d_model: int, cfg: CMSConfig, eps: float = 1e-6):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        hidden = cfg.hidden_mult * d_model
        self.levels = nn.ModuleList(CMSLevel(d_model, hidden, c, cfg, eps) for c in cfg.chunk_sizes)
        self.agg = nn.Parameter(torch.zeros(len(cfg.chunk_sizes))) if cfg.variant == "independent" else None

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        state = {}
        for i, level in enumerate(self.levels):
            w = {"W1": level.w_out, "W2": level.w_in}
            for name, p in w.items():
                state[f"{i}.{name}"] = p.to(device=device, dtype=dtype).expand(batch_size, *p.shape)
                state[f"{i}.G{name[1]}"] = torch.zeros(batch_size, *p.shape, device=device, dtype=dtype)
                if self.cfg.variant == "nested" and i > 0:
                    state[f"{i}.I{name[1]}"] = state[f"{i}.{name}"]
                    state[f"{i}.H{name[1]}"] = torch.zeros(batch_size, *p.shape, device=device, dtype=dtype)
        return state

    def _apply_order(self) -> list[int]:
        idx = list(range(len(self.levels)))
        return idx if self.cfg.order == "slow_first" else idx[::-1]

    def forward(self, x: Tensor, state: State | None = None, pos: int = 0) -> tuple[Tensor, State]:
        """x: (batch, seq, d_model) at absolute positions pos.. -> (output, new state)."""
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        new_state: State = {}
        if self.cfg.variant == "independent":
            weights = torch.softmax(self.agg, dim=0)
            y = torch.zeros_like(x)
            for i in self._apply_order():
                out, s = self._level_scan(i, x, state, pos)
                y = y + weights[i] * out
                new_state.update(s)
            return y, new_state
        for i in self._apply_order():
            x, s = self._level_scan(i, x, state, pos)
            new_state.update(s)
        return x, new_state

    def _level_scan(self, i: int, x: Tensor, state: State, pos: int) -> tuple[Tensor, State]:
        """Run level i over x chunk by chunk: read with chunk-start weights, write at chunk ends (Eq 71)."""
        level = self.levels[i]
        w = {"W1": state[f"{i}.W1"], "W2": state[f"{i}.W2"]}
        g = {"W1": state[f"{i}.G1"], "W2": state[f"{i}.G2"]}
        nested = self.cfg.variant == "nested" and i > 0
        slow = self.cfg.chunk_sizes[i - 1] if nested else 0
        if nested:
            init = {"W1": state[f"{i}.I1"], "W2": state[f"{i}.I2"]}
            h = {"W1": state[f"{i}.H1"], "W2": state[f"{i}.H2"]}
        outs = []
        x_norm = level.norm(x)
        key, target, eta = level.write_inputs(x)
        for start, end in chunk_bounds(pos, x.shape[1], level.chunk_size):
            xs, part = x[:, start:end], (key[:, start:end], target[:, start:end], eta[:, start:end])
            outs.append(level.read(w, xs, x_norm[:, start:end]))
            g = {n: g[n] + s for n, s in level.write_sum(w, *part).items()}
            if nested:
                h = {n: h[n] + s for n, s in level.write_sum(init, *part).items()}
            if (pos + end) % level.chunk_size == 0:
                w = {n: w[n] - g[n] for n in w}
                g = {n: torch.zeros_like(g[n]) for n in g}
            if nested and (pos + end) % slow == 0:
                # Eq 72: the slower level's boundary writes the initial state, then restarts this level from it.
                init = {n: init[n] - h[n] for n in init}
                h = {n: torch.zeros_like(h[n]) for n in h}
                w = dict(init)
        out = {f"{i}.W1": w["W1"], f"{i}.W2": w["W2"], f"{i}.G1": g["W1"], f"{i}.G2": g["W2"]}
        if nested:
            out.update({f"{i}.I1": init["W1"], f"{i}.I2": init["W2"], f"{i}.H1": h["W1"], f"{i}.H2": h["W2"]})
        return torch.cat(outs, dim=1), out


def cms_reference(cms: CMS, x: Tensor, state: State | None = None, pos: int = 0) -> tuple[Tensor, State]:
    """Token-by-token CMS, Eqs 70–74 written literally, with autograd inner gradients.

    The oracle for :meth:`CMS.forward`: each token reads every level with that level's current
    weights, adds η_t ∇_θ ½‖F_θ(k_t) − v_t‖² (taken with ``torch.autograd.grad`` of the literal loss,
    independently of the closed forms) to the level's pending write, and a level applies its pending
    write after the last token of each of its chunks. Differentiable (``create_graph=True``).
    """
    if state is None:
        state = cms.init_state(x.shape[0], x.device, x.dtype)
    st = dict(state)
    order = cms._apply_order()
    outs = []
    for t in range(x.shape[1]):
        a = pos + t
        inp = x[:, t:t + 1]
        level_outs = []
        for i in order:
            level = cms.levels[i]
            nested = cms.cfg.variant == "nested" and i > 0
            w = {"W1": st[f"{i}.W1"], "W2": st[f"{i}.W2"]}
            out = level.read(w, inp)
            eta = level.eta_of(inp)
            for name, grad in _kv_grads(level, w, inp).items():
                st[f"{i}.G{name[1]}"] = st[f"{i}.G{name[1]}"] + eta[:, 0, None, None] * grad
            if nested:
                init = {"W1": st[f"{i}.I1"], "W2": st[f"{i}.I2"]}
                for name, grad in _kv_grads(level, init, inp).items():
                    st[f"{i}.H{name[1]}"] = st[f"{i}.H{name[1]}"] + eta[:, 0, None, None] * grad
            if (a + 1) % level.chunk_size == 0:
                for n in ("1", "2"):
                    st[f"{i}.W{n}"] = st[f"{i}.W{n}"] - st[f"{i}.G{n}"]
                    st[f"{i}.G{n}"] = torch.zeros_like(st[f"{i}.G{n}"])
            if nested and (a + 1) % cms.cfg.chunk_sizes[i - 1] == 0:
                for n in ("1", "2"):
                    st[f"{i}.I{n}"] = st[f"{i}.I{n}"] - st[f"{i}.H{n}"]
                    st[f"{i}.H{n}"] = torch.zeros_like(st[f"{i}.H{n}"])
                    st[f"{i}.W{n}"] = st[f"{i}.I{n}"]
            if cms.cfg.variant == "independent":
                level_outs.append((i, out))
            else:
                inp = out
        if cms.cfg.variant == "independent":
            weights = torch.softmax(cms.agg, dim=0)
            inp = sum(weights[i] * out for i, out in level_outs)
        outs.append(inp)
    return torch.cat(outs, dim=1), st


def _kv_grads(level: CMSLevel, w: State, x: Tensor) -> State:
    """Per-sample ∇ of ½‖F(k) − v‖² for one token x (B, 1, d), by autograd of the literal loss."""
    k, v = level.key(x), level.value(x)
    with torch.enable_grad():
        leaves = {n: p if p.requires_grad else p.detach().requires_grad_(True) for n, p in w.items()}
        fk = k + activation(level.spec.activation, level.norm(k) @ leaves["W2"].mT) @ leaves["W1"].mT
        loss = 0.5 * (fk - v).pow(2).sum()
        grads = torch.autograd.grad(loss, [leaves["W1"], leaves["W2"]], create_graph=True)
    return {"W1": grads[0], "W2": grads[1]}
