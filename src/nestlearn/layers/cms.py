"""Continuum Memory System (CMS): a chain of MLP levels, level ℓ written once every C(ℓ) tokens.

NL-L §7.1, Eqs 70–74 (spec §6); decisions D13–D17. Level ℓ is the residual MLP

    F_ℓ(x) = x + W_out σ(W_in n(x))                          (``level_form="mlp"``; n: RMSNorm, D15)
    F_ℓ(x) = x + W_down (SiLU(W_gate n(x)) ⊙ W_up n(x))       (``level_form="swiglu"``, D15)

(the SwiGLU form keeps a pre-trained Transformer++ MLP as the level's initial state, spec §6.4).
The update signal (``signal``, D13) says what changes the level's weights (Eq 71):

* ``"kv"`` and ``"lss"``: the weights (W_in, W_out), resp. (W_gate, W_up, W_down), are a
  per-sample fast state (D2) starting from meta-learned initial values. Inside a chunk of C(ℓ)
  tokens the level reads with its chunk-start weights θ_b; at the chunk's end it writes

      θ ← θ − Σ_{t ∈ chunk} η_t g_t,    η_t = η_max · sigmoid(w_ηᵀ x_t + b_η) / (C(ℓ) · d),

  so a write only affects later chunks (causal by construction). ``kv`` (local key-value
  regression): g_t = ∇_θ ½‖F_θb(k_t) − v_t‖² with k_t = W_k x_t, v_t = W_v x_t. ``lss`` (local
  surprise signal, spec §1.3 Eq 9): g_t = ∇_θ ⟨F_θb(x_t), u_t⟩, where u_t = ∂L_c/∂y_t is the
  gradient of the model's next-token losses inside the chunk with respect to this level's output,
  detached. u comes from the model (:mod:`nestlearn.models.lss`), so this layer either takes it as
  an input (``forward(..., u=...)``) or, driven by the model, records its reads (``tape``) and
  writes when the model calls :meth:`CMS.lss_write` at a chunk's end.
* ``"optimizer"``: the weights are ordinary slow parameters with no fast state; the level module
  is tagged with its period ``step_periods[ℓ]`` (:data:`nestlearn.optim.periodic.STEP_PERIOD_ATTR`)
  and the outer optimiser steps it only every that many optimiser steps with the summed gradients.

The 1/(C·d) factor of η [Interp; D13 leaves the values of η open] keeps the summed step of a chunk
scale-free: the C gradients of a chunk are taken at the same point and each grows with
‖n(·)‖² = d, so an unscaled η that works for one (C, d) diverges for another. A write is the
associative-memory primitive of :mod:`nestlearn.memory` with plain GD: a level is the non-residual
MLP memory applied to n(k) with objective L2 and target v − k (``kv``), or applied to n(x) with
objective ``dot`` and value −u (``lss``), and its inner gradients are the closed forms of spec §5.8
(:func:`write_factors`, which also gives the SwiGLU form's). Only the chain of chunk-start weights
is sequential (each chunk's gradients are taken at its own start weights); each chunk's reads and
write share their matrix products (:func:`chunk_terms`), and a batch-shared weight (the initial
state) is read with ordinary, not per-sample, products.
A level with η_max = 0 (or under ``optimizer``) holds no fast state and reads its initial weights
directly: it is the static MLP (spec §6.4: η → 0 reduces to the pre-trained model), computed with
the same unbatched products as an ordinary MLP layer.

Variants (``variant``): ``"sequential"`` (Eq 73, the chain of Eq 70), ``"nested"`` (Eq 72: level
s+1 is re-initialised at every chunk boundary of level s from an initial state that is itself a fast
state, written at level s's frequency with level s+1's own signal and rule [Interp, D15]) and
``"independent"`` (Eq 74: levels read the same input; a softmax-weighted sum aggregates them).
Levels are listed slowest first (D14); ``order="fast_first"`` reverses the application order only.

Chunks are aligned to absolute positions, and a partial chunk's pending write is carried in the
state, so a stream processed in segments equals one pass. The token-by-token oracle is
:func:`nestlearn.layers.cms_reference.cms_reference`, in its own file. The ``optimizer`` signal has no nested
variant (a level without fast state has no initial state to re-initialise from).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nestlearn.errors import ConfigError, check_choice, check_positive
from nestlearn.layers.norm import RMSNorm
from nestlearn.memory import (
    MemorySpec,
    activation,
    activation_grad,
    chunk_bounds,
    weight_step,
)
from nestlearn.memory import monitor
from nestlearn.optim.periodic import STEP_PERIOD_ATTR

Tensor = torch.Tensor
State = dict[str, Tensor]

VARIANTS = ("sequential", "nested", "independent")
ORDERS = ("slow_first", "fast_first")
SIGNALS = ("kv", "lss", "optimizer")
ACTIVATIONS = ("silu", "gelu")
LEVEL_FORMS = ("mlp", "swiglu")
LEVEL_ASSIGNMENTS = ("every_layer", "depth_groups")
CMS_STEP_NORMS = ("bounded", "none")


@dataclass
class CMSConfig:
    """Attributes (D13–D16):
        chunk_sizes: C(ℓ) per level in tokens, slowest first, strictly decreasing; the levels of the
            ``kv`` and ``lss`` signals (``lss`` also needs each size to divide the slower one).
        step_periods: per level, in optimiser steps, slowest first, strictly decreasing; the levels
            of the ``optimizer`` signal (D16).
        variant: ``"sequential"``, ``"nested"`` or ``"independent"`` (``optimizer``: not nested).
        order: ``"slow_first"`` or ``"fast_first"`` application order of the chain.
        signal: update signal (D13): ``"kv"`` (local key-value regression), ``"lss"`` (local
            surprise signal: the gradient of the model's next-token loss) or ``"optimizer"`` (the
            outer optimiser steps level ℓ every ``step_periods[ℓ]`` steps).
        hidden_mult: hidden width of each level as a multiple of d.
        hidden: hidden width of each level; None means ``hidden_mult``·d (stacking sets the
            pre-trained MLP's width).
        activation: σ, ``"silu"`` or ``"gelu"``; the SwiGLU form needs ``"silu"``.
        level_form: ``"mlp"`` (x + W_out σ(W_in n(x))) or ``"swiglu"`` (x + W_down(SiLU(W_gate n(x)) ⊙ W_up n(x))), D15.
        level_assignment: how a model spreads the levels over its layers (D17): ``"every_layer"``
            (every block holds the whole chain) or ``"depth_groups"`` (block i holds one level, the
            one of its contiguous depth group, shallow layers slowest; see :func:`depth_group_chunk_sizes`).
            A model-level layout, read by the family (``hope_attention``), not by :class:`CMS`.
        eta_max: bound of the level learning rate in units of 1/(C·d) (see the module docstring); 0 freezes
            every level. Not used by the ``optimizer`` signal.
        eta_init: initial η_t as a fraction of ``eta_max`` (sets b_η).
        step_norm: ``"bounded"``: each weight's step is η_t/(C·max(1, c_t)) with c_t its curvature: for
            W_out ‖a_t‖² (its input, the hidden activations), for W_in ‖n(k_t)‖²·‖∂F/∂p‖² (its input,
            ‖n(k)‖² ≈ d as in D13's 1/(C·d), times the squared gain of the W_out behind it);
            ``"none"``: η_t/(C·d) for every weight, D13's scale (design.md S3). (The memories' third form,
            ``"implicit"``, equals η_t for small η_t‖p_t‖², d times D13's scale, and is not offered.)
        write_bound: bound τ on each token's gradient norm per weight, 0 for none (design.md S5).
    """

    chunk_sizes: tuple[int, ...] = (512, 128, 32)
    step_periods: tuple[int, ...] = (16, 4, 1)
    variant: str = "sequential"
    order: str = "slow_first"
    signal: str = "kv"
    hidden_mult: int = 4
    hidden: int | None = None
    activation: str = "silu"
    level_form: str = "mlp"
    level_assignment: str = "every_layer"
    eta_max: float = 1.0
    eta_init: float = 0.1
    step_norm: str = "bounded"
    write_bound: float = 0.0

    def validate(self, prefix: str = "cms") -> None:
        if not self.chunk_sizes:
            raise ConfigError(f"{prefix}.chunk_sizes", "needs at least one level")
        for c in self.chunk_sizes:
            check_positive(f"{prefix}.chunk_sizes", c)
        if any(a <= b for a, b in zip(self.chunk_sizes, self.chunk_sizes[1:])):
            raise ConfigError(f"{prefix}.chunk_sizes", f"must be strictly decreasing (slowest first), got {self.chunk_sizes}")
        if not self.step_periods:
            raise ConfigError(f"{prefix}.step_periods", "needs at least one level")
        for p in self.step_periods:
            check_positive(f"{prefix}.step_periods", p)
        if any(a <= b for a, b in zip(self.step_periods, self.step_periods[1:])):
            raise ConfigError(f"{prefix}.step_periods", f"must be strictly decreasing (slowest first), got {self.step_periods}")
        check_choice(f"{prefix}.variant", self.variant, VARIANTS)
        check_choice(f"{prefix}.order", self.order, ORDERS)
        check_choice(f"{prefix}.signal", self.signal, SIGNALS)
        check_positive(f"{prefix}.hidden_mult", self.hidden_mult)
        if self.hidden is not None:
            check_positive(f"{prefix}.hidden", self.hidden)
        check_choice(f"{prefix}.activation", self.activation, ACTIVATIONS)
        check_choice(f"{prefix}.level_form", self.level_form, LEVEL_FORMS)
        if self.level_form == "swiglu" and self.activation != "silu":
            raise ConfigError(f"{prefix}.activation", f"the swiglu level form gates with SiLU, got {self.activation!r}")
        check_choice(f"{prefix}.level_assignment", self.level_assignment, LEVEL_ASSIGNMENTS)
        if self.level_assignment == "depth_groups" and self.variant != "sequential":
            raise ConfigError(f"{prefix}.variant", f"depth_groups puts one level in each block, so only the "
                              f"sequential variant applies, got {self.variant!r}")
        check_positive(f"{prefix}.eta_max", self.eta_max, allow_zero=True)
        check_choice(f"{prefix}.step_norm", self.step_norm, CMS_STEP_NORMS)
        check_positive(f"{prefix}.write_bound", self.write_bound, allow_zero=True)
        if not 0 < self.eta_init < 1:
            raise ConfigError(f"{prefix}.eta_init", f"must lie in (0, 1), got {self.eta_init}")
        if self.signal == "optimizer" and self.variant == "nested":
            raise ConfigError(f"{prefix}.variant", "the optimizer signal has no fast state, so a level has no "
                              "initial state for the slower level to re-initialise it from; use 'sequential' "
                              "or 'independent'")
        if self.variant == "nested" or self.signal == "lss":
            reason = "the nested variant" if self.variant == "nested" else (
                "the lss signal (a carried stream resumes at the start of the slowest open chunk)")
            for slow, fast in zip(self.chunk_sizes, self.chunk_sizes[1:]):
                if slow % fast:
                    raise ConfigError(f"{prefix}.chunk_sizes", f"{reason} needs each chunk size to divide "
                                      f"the slower one, got {fast} and {slow}")

    @property
    def schedule(self) -> tuple[int, ...]:
        """One entry per level: ``step_periods`` for the ``optimizer`` signal, ``chunk_sizes`` otherwise."""
        return self.step_periods if self.signal == "optimizer" else self.chunk_sizes


def depth_group_chunk_sizes(n_layers: int, chunk_sizes: tuple[int, ...],
                            field: str = "model.cms.chunk_sizes") -> tuple[int, ...]:
    """The chunk size of each layer under ``level_assignment="depth_groups"`` (D17, spec §6.4).

    Layer i of L belongs to group ⌊i·k/L⌋ of k = ``len(chunk_sizes)``: contiguous groups by depth
    whose sizes differ by at most one. Group g gets level g's chunk size; levels are listed slowest
    first (D14), so the shallow layers are the slow ones [Interp, D17: provisional]. The same layout
    spreads ``step_periods`` under the ``optimizer`` signal (``field`` names the list in errors).
    """
    levels = len(chunk_sizes)
    if levels > n_layers:
        raise ConfigError(field, f"depth_groups needs at most one level per layer, got "
                          f"{levels} levels for model.n_layers={n_layers}")
    return tuple(chunk_sizes[i * levels // n_layers] for i in range(n_layers))


def _linear(z: Tensor, w: Tensor) -> Tensor:
    """z wᵀ for a weight shared by the batch, (rows, cols), or one per sample, (B, rows, cols); z: (B, n, cols)."""
    return F.linear(z, w) if w.dim() == 2 else z @ w.mT


def swiglu_apply(weights: State, z: Tensor) -> Tensor:
    """The SwiGLU body W₁ (SiLU(W₂ z) ⊙ W₃ z) with W₁ = W_down, W₂ = W_gate, W₃ = W_up.

    Args:
        weights: ``{"W1": (..., d, h), "W2": (..., h, d), "W3": (..., h, d)}``.
        z: (..., n, d).
    """
    return _linear(F.silu(_linear(z, weights["W2"])) * _linear(z, weights["W3"]), weights["W1"])


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


def _hidden(form: str, act: str, pre: Tensor) -> Tensor:
    """The hidden activations from the input product: σ(W₂ z), or SiLU(W_gate z) ⊙ W_up z."""
    if form == "mlp":
        return activation(act, pre)
    gate, up = pre.chunk(2, dim=-1)
    return F.silu(gate) * up


def _pre_grad(form: str, act: str, pre: Tensor, d_hidden: Tensor) -> Tensor:
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
    δ = W₁ᵀ e (:func:`_pre_grad`).

    Args:
        weights: packed weights (:func:`pack_weights`); key: (B, n, d); pre: key W_inᵀ (B, n, h_in);
        hidden: h(pre) (B, n, h); out: the body W₁ a at the keys (B, n, d), needed for ``"l2"`` only; target: (B, n, d);
        eta: (B, n, 1).
        step: the level's spec, whose ``step_norm`` and ``write_bound`` give each weight its own step
            from its input (a for W₁, the key for W_in; :func:`nestlearn.memory.weight_step`); None: η.
    """
    e = out - target if objective == "l2" else -target
    d_pre = _pre_grad(form, act, pre, e @ weights["W1"])
    if step is None:
        return {"W1": (e * eta, hidden), "Win": (key * eta, d_pre)}
    gain = _output_gain(form, act, pre, weights["W1"]) if step.step_norm != "none" else None
    return {"W1": (e * _scaled_step(step, eta, e, hidden), hidden),
            "Win": (key * _scaled_step(step, eta, d_pre, key, gain), d_pre)}


def _scaled_step(spec: MemorySpec, eta: Tensor, e: Tensor, p: Tensor, gain: Tensor | None = None) -> Tensor:
    """(B, n, 1): η normalised by the weight's curvature and scaled by the write bound (design.md S3, S5)."""
    rate, bound = weight_step(spec, eta.squeeze(-1), e, p, gain)
    return (rate if bound is None else rate * bound).unsqueeze(-1)


def _output_gain(form: str, act: str, pre: Tensor, w1: Tensor) -> Tensor:
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
    hidden = _hidden(form, act, pre)
    n = x_norm.shape[-2]
    pre_x, pre_k = pre.split(n, dim=-2) if both else (pre, pre)
    hidden_x, hidden_k = hidden.split(n, dim=-2) if both else (hidden, hidden)
    if both and l2:
        out_x, out_k = _linear(hidden, weights["W1"]).split(n, dim=-2)
    else:
        out_x = out_k = _linear(hidden_x, weights["W1"]) if read or l2 else None
    factors = write_factors(form, act, objective, weights, key, pre_k, hidden_k, out_k, target, eta, step) if write else None
    return ChunkTerms(out_x if read else None, pre_x if read else None, factors)


def _subtract(weights: State, factors: dict[str, tuple[Tensor, Tensor]]) -> State:
    """θ − Eᵀ P per weight (one fused product each; a shared θ broadcasts to the batch)."""
    return {n: torch.baddbmm(w, factors[n][0].mT, factors[n][1], alpha=-1) for n, w in weights.items()}


def _accumulate(pending: State | None, factors: dict[str, tuple[Tensor, Tensor]]) -> State:
    """pending + Eᵀ P per weight; None stands for a zero pending write."""
    out = {}
    for n, (e, p) in factors.items():
        out[n] = e.mT @ p if pending is None else torch.baddbmm(pending[n], e.mT, p)
    return out


def _minus(weights: State, pending: State | None) -> State:
    return weights if pending is None else {n: w - pending[n] for n, w in weights.items()}


class LSSRecord(NamedTuple):
    """What an ``lss`` level keeps of one read until its chunk's write (see :meth:`CMS.lss_write`).

    x_norm: (B, n, d) the level's normalised input n(x); eta: (B, n, 1) η_t; y: (B, n, d) the
    level's output, the tensor u = ∂L_c/∂y is taken with respect to; pre: (B, n, h_in) the read's
    input product n(x) W_inᵀ at the chunk-start weights, which the write reuses.
    """

    x_norm: Tensor
    eta: Tensor
    y: Tensor
    pre: Tensor


class CMSLevel(nn.Module):
    """The slow parameters of one level: norm gain, initial fast weights, k/v projections, η gate.

    Initial fast weights: ``w_in``, ``w_out`` (form ``"mlp"``) or ``w_gate``, ``w_up``, ``w_down``
    (form ``"swiglu"``); :attr:`initial` names them by their state keys W1, W2(, W3). The k/v
    projections exist for the ``kv`` signal, the η gate for ``kv`` and ``lss``. Under the
    ``optimizer`` signal the level has neither and is tagged with its step period.

    Args:
        d_model: width d.
        hidden: hidden width of the level.
        period: the level's entry of ``cfg.schedule``: its chunk size C in tokens (``kv``, ``lss``)
            or its step period in optimiser steps (``optimizer``).
        cfg: the CMS config.
        eps: RMSNorm epsilon.
    """

    def __init__(self, d_model: int, hidden: int, period: int, cfg: CMSConfig, eps: float = 1e-6):
        super().__init__()
        self.signal = cfg.signal
        self.form = cfg.level_form
        writes = cfg.signal != "optimizer"
        self.chunk_size = period if writes else None
        self.static = cfg.eta_max == 0 or not writes
        # Without per-weight normalisation the 1/d stands in for the key's ‖n(k)‖² = d (D13's scale).
        self.eta_scale = cfg.eta_max / (period * (d_model if cfg.step_norm == "none" else 1)) if writes else 0.0
        self.eta_init = cfg.eta_init
        self.spec = MemorySpec(kind="mlp", objective="l2" if cfg.signal == "kv" else "dot", rule="gd",
                               momentum="none", chunk_size=period, activation=cfg.activation, residual=False,
                               step_norm=cfg.step_norm, write_bound=cfg.write_bound, field="cms")
        self.norm = RMSNorm(d_model, eps)
        if self.form == "mlp":
            self.w_in = nn.Parameter(torch.empty(hidden, d_model))
            self.w_out = nn.Parameter(torch.empty(d_model, hidden))
        else:
            self.w_gate = nn.Parameter(torch.empty(hidden, d_model))
            self.w_up = nn.Parameter(torch.empty(hidden, d_model))
            self.w_down = nn.Parameter(torch.empty(d_model, hidden))
        self.key = nn.Linear(d_model, d_model, bias=False) if cfg.signal == "kv" else None
        self.value = nn.Linear(d_model, d_model, bias=False) if cfg.signal == "kv" else None
        self.eta = nn.Linear(d_model, 1) if writes else None
        if not writes:
            setattr(self, STEP_PERIOD_ATTR, period)
        self.reset_special_parameters()

    @property
    def initial(self) -> State:
        """State key -> initial fast weight: W1 is the output matrix, W2 (and W3) the input ones."""
        if self.form == "mlp":
            return {"W1": self.w_out, "W2": self.w_in}
        return {"W1": self.w_down, "W2": self.w_gate, "W3": self.w_up}

    def reset_special_parameters(self) -> None:
        init = self.initial
        for name in ("W2", "W3")[:len(init) - 1]:
            nn.init.normal_(init[name], std=1.0 / math.sqrt(init[name].shape[1]))
        w_out = init["W1"]
        nn.init.normal_(w_out, std=0.02 / math.sqrt(w_out.shape[1] / w_out.shape[0]))
        if self.eta is not None:
            nn.init.zeros_(self.eta.weight)
            nn.init.constant_(self.eta.bias, math.log(self.eta_init / (1 - self.eta_init)))

    def read(self, weights: State, x: Tensor, x_norm: Tensor | None = None) -> Tensor:
        """F(x) with fixed weights (state names): x (B, n, d) -> (B, n, d); ``x_norm`` is n(x) if already computed.

        With the unbatched initial weights this is exactly the static MLP, the same products as
        :class:`~nestlearn.layers.mlp.SwiGLU` for the SwiGLU form (spec §6.4).
        """
        x_norm = self.norm(x) if x_norm is None else x_norm
        if self.form == "mlp":
            return x + _linear(activation(self.spec.activation, _linear(x_norm, weights["W2"])), weights["W1"])
        return x + swiglu_apply(weights, x_norm)

    def write_inputs(self, x: Tensor, x_norm: Tensor | None = None, u: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The parts of the write that do not depend on the fast weights, for all tokens of x (B, n, d).

        Args:
            x: (B, n, d) the level's input; x_norm: n(x) if already computed.
            u: (B, n, d) the ``lss`` value ∂L_c/∂y (required for ``lss``, unused for ``kv``).

        Returns:
            the inner key: n(k) (``kv``) or n(x) itself (``lss``, the same tensor, so that
            :func:`chunk_terms` shares the read's products), (B, n, d); the inner value: v − k
            (``kv``) or −u (``lss``), (B, n, d); η: (B, n, 1).
        """
        eta = self.eta_of(x).unsqueeze(-1)
        if self.signal == "lss":
            return (self.norm(x) if x_norm is None else x_norm), -u, eta
        k, v = F.linear(x, torch.cat((self.key.weight, self.value.weight))).chunk(2, dim=-1)
        return self.norm(k), v - k, eta

    def terms(self, weights: State, x_norm: Tensor, key: Tensor, target: Tensor, eta: Tensor,
              read: bool = True, write: bool = True) -> ChunkTerms:
        """:func:`chunk_terms` with this level's form, activation, objective and steps (packed weights)."""
        return chunk_terms(self.form, self.spec.activation, self.spec.objective, weights, x_norm, key, target, eta,
                           read, write, self.step)

    @property
    def step(self) -> MemorySpec | None:
        """The spec that gives each weight its own step, or None for the plain η_t (``step_norm="none"``)."""
        return None if self.spec.step_norm == "none" and self.spec.write_bound <= 0 else self.spec

    def eta_of(self, x: Tensor) -> Tensor:
        """η_t: (B, n, d) -> (B, n)."""
        return self.eta_scale * torch.sigmoid(self.eta(x)).squeeze(-1)


class CMS(nn.Module):
    """A Continuum Memory System over width ``d_model`` (see the module docstring).

    State keys per level i, for each fast weight W{j} of the level (j = 1, 2, and 3 for SwiGLU):
    ``{i}.W{j}`` (the fast weight), ``{i}.G{j}`` (the pending write of the current partial chunk)
    and, in the nested variant for levels i ≥ 1, ``{i}.I{j}``, ``{i}.H{j}`` (the fast initial state
    and its pending write). Static levels (η_max = 0, or the ``optimizer`` signal) have no state.
    """

    def __init__(self, d_model: int, cfg: CMSConfig, eps: float = 1e-6):
        super().__init__()
        cfg.validate()
        if cfg.level_assignment != "every_layer":
            raise ConfigError("cms.level_assignment", f"{cfg.level_assignment!r} spreads levels over a model's "
                              "layers; this model family builds every block with the whole chain (use 'every_layer')")
        self.cfg = cfg
        hidden = cfg.hidden or cfg.hidden_mult * d_model
        self.levels = nn.ModuleList(CMSLevel(d_model, hidden, c, cfg, eps) for c in cfg.schedule)
        self.agg = nn.Parameter(torch.zeros(len(cfg.schedule))) if cfg.variant == "independent" else None

    @property
    def lss_levels(self) -> list[int]:
        """Indices of the levels written by the ``lss`` signal (none for other signals or η_max = 0)."""
        return [i for i, level in enumerate(self.levels) if level.signal == "lss" and not level.static]

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        state = {}
        for i, level in enumerate(self.levels):
            if level.static:
                continue
            for name, p in level.initial.items():
                j = name[1:]
                state[f"{i}.{name}"] = p.to(device=device, dtype=dtype).expand(batch_size, *p.shape)
                state[f"{i}.G{j}"] = torch.zeros(batch_size, *p.shape, device=device, dtype=dtype)
                if self.cfg.variant == "nested" and i > 0:
                    state[f"{i}.I{j}"] = state[f"{i}.{name}"]
                    state[f"{i}.H{j}"] = torch.zeros(batch_size, *p.shape, device=device, dtype=dtype)
        return state

    def _apply_order(self) -> list[int]:
        idx = list(range(len(self.levels)))
        return idx if self.cfg.order == "slow_first" else idx[::-1]

    def forward(self, x: Tensor, state: State | None = None, pos: int = 0, u: dict[int, Tensor] | None = None,
                tape: dict[int, list[LSSRecord]] | None = None, keep_state: bool = True) -> tuple[Tensor, State]:
        """x: (batch, seq, d_model) at absolute positions pos.. -> (output, new state).

        ``keep_state=False`` (the caller discards the state) skips each level's last write, which
        only the returned state would hold, and returns {}.

        The ``lss`` signal needs one of:

        * ``u``: level index -> (batch, seq, d_model), the value u_t of every ``lss`` level at every
          token of x; the levels then write at their chunk ends like ``kv`` levels;
        * ``tape`` (driven by the model, :mod:`nestlearn.models.lss`): the ``lss`` levels only read,
          and append one :class:`LSSRecord` per call to ``tape[level]``; x must not cross a chunk
          end of an ``lss`` level except at its last token, and the caller applies the write there
          with :meth:`lss_write`.
        """
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        if self.lss_levels and u is None and tape is None:
            raise ValueError("CMS with cms.signal='lss' needs u (the value of each level) or a tape; inside a "
                             "model the lss driver supplies them (nestlearn.models.lss)")
        new_state: State = {}
        if self.cfg.variant == "independent":
            weights = torch.softmax(self.agg, dim=0)
            y = torch.zeros_like(x)
            for i in self._apply_order():
                out, s = self._level_scan(i, x, state, pos, u, tape, keep_state)
                y = y + weights[i] * out
                new_state.update(s)
            return y, (new_state if keep_state else {})
        for i in self._apply_order():
            x, s = self._level_scan(i, x, state, pos, u, tape, keep_state)
            new_state.update(s)
        return x, (new_state if keep_state else {})

    def _level_scan(self, i: int, x: Tensor, state: State, pos: int, u: dict[int, Tensor] | None,
                    tape: dict[int, list[LSSRecord]] | None, keep_state: bool = True) -> tuple[Tensor, State]:
        """Run level i over x chunk by chunk: read with chunk-start weights, write at chunk ends (Eq 71).

        What stays sequential is the chain of chunk-start weights θ_{c+1} = θ_c − Σ_{t∈c} η_t g_t(θ_c):
        each chunk's gradients are taken at θ_c. Everything that does not depend on θ (n(x), k, v,
        n(k), η) is computed for all tokens at once; per chunk the reads and the write share two
        matrix products (:func:`chunk_terms`) and the write is one fused product per weight. The
        last chunk's write only reaches the returned state, so it is kept out of the read's products
        (the outer backward pass then skips it), and without ``keep_state`` it is not computed.
        """
        level = self.levels[i]
        if level.static:
            return level.read(level.initial, x), {}
        names = list(level.initial)
        x_norm = level.norm(x)
        if level.signal == "lss" and u is None:
            return self._lss_read(i, x, x_norm, state, pos, tape)
        batch, form = x.shape[0], level.form
        w = pack_weights(form, {n: state[f"{i}.{n}"] for n in names})
        g = pack_weights(form, {n: state[f"{i}.G{n[1:]}"] for n in names})
        nested = self.cfg.variant == "nested" and i > 0
        slow = self.cfg.chunk_sizes[i - 1] if nested else 0
        if nested:
            init = pack_weights(form, {n: state[f"{i}.I{n[1:]}"] for n in names})
            h = pack_weights(form, {n: state[f"{i}.H{n[1:]}"] for n in names})
        key, target, eta = level.write_inputs(x, x_norm, u.get(i) if u is not None else None)
        bounds = chunk_bounds(pos, x.shape[1], level.chunk_size)
        sizes = [end - start for start, end in bounds]
        # split, not slices: a slice's backward fills a zero tensor of the whole sequence per chunk.
        pieces = [t.split(sizes, dim=1) for t in (x, x_norm, target, eta)]
        keys = pieces[1] if level.signal == "lss" else key.split(sizes, dim=1)
        outs = []
        mon = monitor.active()
        for c, (start, end) in enumerate(bounds):
            xs, xn, tg, et = (p[c] for p in pieces)
            if c == len(bounds) - 1 and not keep_state:
                outs.append(xs + level.terms(w, xn, keys[c], tg, et, write=False).out)
                return torch.cat(outs, dim=1), {}
            if c == len(bounds) - 1 and keys[c] is not xn:
                terms = level.terms(w, xn, keys[c], tg, et, write=False)
                factors = level.terms(w, xn, keys[c], tg, et, read=False).factors
            else:
                terms = level.terms(w, xn, keys[c], tg, et)
                factors = terms.factors
            y = xs + terms.out
            if tape is not None:
                tape.setdefault(i, []).append(LSSRecord(keys[c], et, y, terms.pre))
            outs.append(y)
            if mon is not None:  # the chunk-start weights this chunk read with (design.md S6)
                mon.observe(f"cms{i}", pos + start, w, y)
            if nested:
                h = _accumulate(h, level.terms(init, xn, keys[c], tg, et, read=False).factors)
            if (pos + end) % level.chunk_size == 0:
                w, g = _subtract(_minus(w, g), factors), None
            else:
                g = _accumulate(g, factors)
            if nested and (pos + end) % slow == 0:
                # Eq 72: the slower level's boundary writes the initial state, then restarts this level from it.
                init, h = _minus(init, h), None
                w = dict(init)
        out = {}
        for kind, packed in (("", w), ("G", g)) + ((("I", init), ("H", h)) if nested else ()):
            full = unpack_weights(form, packed, batch) if packed is not None else None
            for n in names:
                j = n[1:]
                name = f"{i}.{n}" if kind == "" else f"{i}.{kind}{j}"
                out[name] = full[n] if full is not None else torch.zeros_like(state[name])
        return torch.cat(outs, dim=1), out

    def _lss_read(self, i: int, x: Tensor, x_norm: Tensor, state: State, pos: int,
                  tape: dict[int, list[LSSRecord]]) -> tuple[Tensor, State]:
        """An ``lss`` level inside one chunk: read with the current weights and record the read."""
        level = self.levels[i]
        if pos % level.chunk_size + x.shape[1] > level.chunk_size:
            raise ValueError(f"CMS level {i}: positions {pos}..{pos + x.shape[1] - 1} cross a chunk end of "
                             f"C={level.chunk_size}; the lss driver must split the input at chunk ends")
        w = pack_weights(level.form, {n: state[f"{i}.{n}"] for n in level.initial})
        eta = level.eta_of(x).unsqueeze(-1)
        terms = level.terms(w, x_norm, x_norm, x_norm, eta, write=False)
        y = x + terms.out
        if not y.requires_grad:  # u = ∂L_c/∂y needs y in a graph even when nothing upstream is trained
            y.requires_grad_(True)
        tape.setdefault(i, []).append(LSSRecord(x_norm, eta, y, terms.pre))
        return y, {k: v for k, v in state.items() if k.split(".", 1)[0] == str(i)}

    def lss_write(self, i: int, state: State, records: list[LSSRecord], us: list[Tensor], end: int) -> State:
        """Level i's write at the end of its chunk (absolute position ``end``), Eq 71 with the ``lss`` signal.

        θ ← θ − Σ_t η_t ∇_θ ⟨F_θ(x_t), u_t⟩ over the chunk's reads ``records`` with values ``us``
        (one (B, n, d) tensor per record, detached), at the chunk-start weights in ``state`` — the
        weights the reads used, so their input products are reused; all records are one write.
        Nested variant: the same values write the fast initial state, which replaces the level at a
        boundary of the slower level (Eq 72). Returns level i's new state entries.
        """
        level = self.levels[i]
        names = list(level.initial)
        batch, form, act = us[0].shape[0], level.form, level.spec.activation
        w = pack_weights(form, {n: state[f"{i}.{n}"] for n in names})
        x_norm, eta, pre = (torch.cat(t, dim=1) for t in zip(*((r.x_norm, r.eta, r.pre) for r in records)))
        target = -torch.cat(us, dim=1)
        w = _subtract(w, write_factors(form, act, "dot", w, x_norm, pre, _hidden(form, act, pre), None, target, eta,
                                       level.step))
        out = {f"{i}.G{n[1:]}": state[f"{i}.G{n[1:]}"] for n in names}
        if self.cfg.variant == "nested" and i > 0:
            init = pack_weights(form, {n: state[f"{i}.I{n[1:]}"] for n in names})
            h = pack_weights(form, {n: state[f"{i}.H{n[1:]}"] for n in names})
            h = _accumulate(h, level.terms(init, x_norm, x_norm, target, eta, read=False).factors)
            if end % self.cfg.chunk_sizes[i - 1] == 0:
                init, h = _minus(init, h), None
                w = dict(init)
            full_i = unpack_weights(form, init, batch)
            full_h = unpack_weights(form, h, batch) if h is not None else None
            for n in names:
                j = n[1:]
                out[f"{i}.I{j}"] = full_i[n]
                out[f"{i}.H{j}"] = full_h[n] if full_h is not None else torch.zeros_like(state[f"{i}.H{j}"])
        full = unpack_weights(form, w, batch)
        out.update({f"{i}.{n}": full[n] for n in names})
        return out
