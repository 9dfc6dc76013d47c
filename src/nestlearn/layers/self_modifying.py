"""Self-modifying Titans: memories that generate their own keys, values, gates and targets (NL-L §8).

The token mixer of the Hope block (spec §5.3–5.7, NL-L Eqs 83–96; decisions D3–D12). Per head,
with x_t the block input after the pre-norm, every adaptive projection is itself an associative
memory, a 2-layer MLP M(z) = z + W₁σ(W₂z) (Eq 89; scalar heads d→h→1 without residual, D8):

    k_t = L2norm(φ(conv(M_k(x_t))))      v_t = φ(conv(M_v(x_t)))        q_t = L2norm(φ(conv(W_q x_t)))
    η_t = η_max·sigmoid(M_η(x_t) + b_η)  α_t = sigmoid(M_α(x_t) + b_α)                       (Eqs 83, 94)
    v̂_{□,t} = M_□(v_t)                   the memory's own target, constant in its inner gradient (Eqs 84, 95; D7)
    o_t = M_memory,t−1(q_t)                                                               (Eq 94; D5)

and every memory □ ∈ {k, v, (q), η, α, memory} learns min ½‖M_□(k_t) − v̂_{□,t}‖² (Eq 85) with DGD,
retention and momentum (Eq 88, D6, D9), on the weight W₂ that consumes k:

    S_t = β_t S_{t−1} + g_t,   W₂ ← W₂(α_t I − η_t k_t k_tᵀ) − η_t S⁽²⁾_t,   W₁ ← α_t W₁ − η_t S⁽¹⁾_t.

Chunking (Eq 90 with the causal index fix b(t) = C(⌈t/C⌉ − 1), spec §5.5, D4): all inner gradients
and every generation (k, v, q, η, α, v̂) read the boundary state of the generating memory, on the grid
``chunk_size_other`` for the k, v, q, η, α memories and ``chunk_size_memory`` for the main memory;
only the output read o_t sees intra-chunk states. Because generation reads boundary states, each
chunk of ``chunk_size_other`` tokens is generated in parallel, and every memory is written by the
chunk-parallel primitive :func:`nestlearn.memory.memory_scan` (closed-form gradients, spec §5.8–5.9)
with its self-generated targets built inside the primitive (``self_values``). The generating memories
only need their states (``outputs=False``), and the main memory, which nothing in generation reads,
runs after the generation loop as one scan over the whole call.
:func:`nestlearn.layers.self_modifying_reference.self_modifying_reference` is the token-by-token
oracle of spec §5.7, in its own file.

Memories with the same shape share one stacked tensor along the head axis ("groups"), so one scan
call updates them all: ``proj`` holds the adaptive vector projections in the order k, v, q (those
switched on), ``gate`` holds η then α, ``mem`` the main memory. Fast state (flat dict, batch axis
first, D2): ``{group}.{W1,W2}`` weights (B, G·H, d_out, d_in), ``{group}.{W1,W2}_b`` the boundary
copies, ``{group}.{W1,W2}_mom`` the momenta, and ``conv`` (B, 3, channels), the last inputs of the
causal convolution.

Output (D11): y = W_o(RMSNorm(o) ⊙ sigmoid(W_g x)), the norm per head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from nestlearn.errors import ConfigError, check_choice, check_positive, check_range
from nestlearn.layers.norm import RMSNorm
from nestlearn.layers.titans import causal_depthwise_conv
from nestlearn.memory import MemorySpec, chunk_bounds, init_memory_state, memory_apply, memory_scan
from nestlearn.memory.spec import EIGENS, RETAINS, STEP_NORMS

Tensor = torch.Tensor
State = dict[str, Tensor]

CONV_WIDTH = 4  # "local convolutions with window size of 4" (NL-L §8.3)
GROUPS = ("proj", "gate", "mem")


@dataclass
class SelfModConfig:
    """The ``selfmod.*`` switches (decisions D3–D12); defaults are the binding ones.

    Attributes:
        write_grad: ``"differentiable"`` or ``"stopgrad"`` outer gradients through the writes (D3).
        chunk_size_memory: chunk of the main memory C_mem (D4).
        chunk_size_other: chunk of the k, v, q, η, α memories C_oth, a multiple of C_mem (D4).
        read: ``"intra_chunk"`` o_t = M_{t−1}(q_t), or ``"boundary"`` o_t = M_b(q_t) (D5).
        objective: ``"l2"`` ½‖M(k) − v̂‖² or ``"dot"`` −⟨M(k), v̂⟩ (D6).
        inner_rule: ``"dgd"`` (Eq 88) or ``"gd"`` (ablation "w/o DGD": α_t I only) (D6).
        weight_decay: generate α_t; False is the ablation "w/o weight decay", α ≡ 1 (D6).
        dgd_normalize: use η' = η/(1 + η‖k‖²) in both terms, as Eq 57 (D6).
        eta_max: bound of η_t, in (0, 1] (D8).
        momentum: ``"data"`` β_t = sigmoid(w_βᵀx_t + b_β), ``"scalar"`` one β per head, ``"off"`` (D9).
        momentum_form: ``"ema"`` S ← βS + (1 − β)g or ``"scaled"`` S ← βS + g (D9 as first read;
            it amplifies the step by up to 1/(1 − β)); the step is η S in both (design.md S1).
        eigen: ``"positive"`` step η or ``"signed"`` step (1 + α)η, whose transition along k reaches
            negative eigenvalues (design.md S2).
        step_norm: ``"none"``, ``"implicit"`` (η/(1 + η‖p‖²)) or ``"bounded"`` (η/max(1, ‖p‖²)), per
            weight with that weight's own input p (design.md S3).
        retain: ``"initial"`` (decay toward the meta-learned initial state) or ``"zero"`` (design.md S4).
        write_bound: bound τ on the norm of each token's gradient per weight, 0 for none (design.md S5).
        adaptive_q: q from a self-modifying memory instead of W_q (D10; ablation "w/o inner-projection q").
        adaptive_k, adaptive_v: k, v from self-modifying memories; False replaces them by static linear
            projections (ablations "w/o inner-projection k / v", Table 6).
        conv: ``"qkv"`` (depthwise conv on q, k, v), ``"input"`` (one conv on the input of all
            memories) or ``"none"`` (D11).
        conv_pointwise: a 1×1 convolution after each depthwise one (D11).
        qkv_activation: ``"silu"`` or ``"none"`` after the convolution (D11).
        output_gate: ``"sigmoid"`` or ``"none"`` (D11).
        heads: H independent memory sets over d/H channels each (D11).
        memory_hidden: hidden width of every memory over all heads (None: d; D12).
        activation: σ of the memories, ``"silu"`` or ``"gelu"`` (D12).
        memory_out_init: std of the initial W₁ of every memory (D12).
        eta_init, alpha_init, beta_init: initial η/η_max, α and β, set through the biases (D8, D9).
        v_norm: ``"l2"`` (v L2-normalised like k; the default) or ``"none"`` (spec §5.7 literally:
            v is not normalised). [Project decision, not in decisions.md] With ``"none"`` the
            self-generated targets v̂ = M(v) grow with the memory that generates them: at
            initialisation a d=64 Hope on KJV bytes produced NaN from token ~400 of a 512-token
            sequence (d=256 on random input: from token 144), so it cannot train at the D16
            training lengths, and a tiny Hope trained on 128-token sequences diverged within 384
            tokens of carried state. With ``"l2"`` both stayed bounded (docs/results.md, ablations).
    """

    write_grad: str = "differentiable"
    chunk_size_memory: int = 16
    chunk_size_other: int = 64
    read: str = "intra_chunk"
    objective: str = "l2"
    inner_rule: str = "dgd"
    weight_decay: bool = True
    dgd_normalize: bool = False
    eta_max: float = 1.0
    momentum: str = "data"
    momentum_form: str = "ema"
    eigen: str = "signed"
    step_norm: str = "bounded"
    retain: str = "zero"
    write_bound: float = 1.0
    adaptive_q: bool = False
    adaptive_k: bool = True
    adaptive_v: bool = True
    conv: str = "qkv"
    conv_pointwise: bool = False
    qkv_activation: str = "silu"
    output_gate: str = "sigmoid"
    heads: int = 1
    memory_hidden: int | None = None
    activation: str = "silu"
    memory_out_init: float = 1e-3
    eta_init: float = 0.1
    alpha_init: float = 0.99
    beta_init: float = 0.5
    v_norm: str = "l2"

    def validate(self, prefix: str = "model.selfmod") -> None:
        check_choice(f"{prefix}.write_grad", self.write_grad, ("differentiable", "stopgrad"))
        check_positive(f"{prefix}.chunk_size_memory", self.chunk_size_memory)
        check_positive(f"{prefix}.chunk_size_other", self.chunk_size_other)
        if self.chunk_size_other % self.chunk_size_memory:
            raise ConfigError(f"{prefix}.chunk_size_other",
                              f"must be a multiple of {prefix}.chunk_size_memory={self.chunk_size_memory}, "
                              f"got {self.chunk_size_other}")
        check_choice(f"{prefix}.read", self.read, ("intra_chunk", "boundary"))
        check_choice(f"{prefix}.objective", self.objective, ("l2", "dot"))
        check_choice(f"{prefix}.inner_rule", self.inner_rule, ("dgd", "gd"))
        check_range(f"{prefix}.eta_max", self.eta_max, 0.0, 1.0, low_open=True)
        check_choice(f"{prefix}.momentum", self.momentum, ("data", "scalar", "off"))
        check_choice(f"{prefix}.momentum_form", self.momentum_form, ("ema", "scaled"))
        check_choice(f"{prefix}.eigen", self.eigen, EIGENS)
        check_choice(f"{prefix}.step_norm", self.step_norm, STEP_NORMS)
        check_choice(f"{prefix}.retain", self.retain, RETAINS)
        check_positive(f"{prefix}.write_bound", self.write_bound, allow_zero=True)
        check_choice(f"{prefix}.conv", self.conv, ("qkv", "input", "none"))
        check_choice(f"{prefix}.qkv_activation", self.qkv_activation, ("silu", "none"))
        check_choice(f"{prefix}.output_gate", self.output_gate, ("sigmoid", "none"))
        check_positive(f"{prefix}.heads", self.heads)
        if self.memory_hidden is not None:
            check_positive(f"{prefix}.memory_hidden", self.memory_hidden)
        check_choice(f"{prefix}.activation", self.activation, ("silu", "gelu"))
        check_positive(f"{prefix}.memory_out_init", self.memory_out_init, allow_zero=True)
        for name in ("eta_init", "alpha_init", "beta_init"):
            check_range(f"{prefix}.{name}", getattr(self, name), 0.0, 1.0, low_open=True, high_open=True)
        check_choice(f"{prefix}.v_norm", self.v_norm, ("none", "l2"))

    def check_width(self, d_model: int, prefix: str = "model.selfmod") -> None:
        """Raise unless the heads split d (and the hidden width) evenly."""
        if d_model % self.heads:
            raise ConfigError(f"{prefix}.heads", f"must divide d_model={d_model}, got {self.heads}")
        hidden = self.memory_hidden or d_model
        if hidden % self.heads:
            raise ConfigError(f"{prefix}.memory_hidden", f"must be a multiple of {prefix}.heads={self.heads}, got {hidden}")

    def memory_spec(self, group: str) -> MemorySpec:
        """The primitive's spec of a memory group: its chunk grid, residual form and update rule."""
        spec = MemorySpec(kind="mlp", objective=self.objective, rule=self.inner_rule,
                          momentum="none" if self.momentum == "off" else self.momentum_form,
                          chunk_size=self.chunk_size_memory, read="before", activation=self.activation,
                          residual=True, write_grad=self.write_grad, eigen=self.eigen, step_norm=self.step_norm,
                          retain=self.retain, write_bound=self.write_bound, field="model.selfmod")
        if group == "mem":
            return spec
        return replace(spec, chunk_size=self.chunk_size_other, residual=group == "proj")


def logit(p: float) -> float:
    """sigmoid⁻¹(p), for biases that make a gate start at p."""
    return math.log(p / (1 - p))


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, n, d) -> (B, H, n, d/H)."""
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, n, d/H) -> (B, n, d)."""
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dh)


def repeat_groups(x: Tensor | None, groups: int) -> Tensor | None:
    """(B, H, ...) -> (B, G·H, ...): the same keys, values or gates for each memory of a group."""
    if x is None or groups == 1:
        return x
    return x.repeat(1, groups, *([1] * (x.dim() - 2)))


def boundary_weights(state: State, pos: int, chunk_size: int) -> State:
    """The weights at the last chunk boundary b(t) for a token at absolute position ``pos`` (D4)."""
    at_boundary = pos % chunk_size == 0
    return {n: state[n] if at_boundary else state[f"{n}_b"] for n in ("W1", "W2")}


def normalized_eta(eta: Tensor, k: Tensor) -> Tensor:
    """η' = η/(1 + η‖k‖²) (Eq 57, spec §3.2): eta (..., n), k (..., n, d) -> (..., n)."""
    return eta / (1 + eta * k.pow(2).sum(-1))


class SelfModifyingTitans(nn.Module):
    """The self-modifying Titans token mixer (module docstring; spec §5.7).

    Args:
        d_model: width d, split into ``cfg.heads`` heads.
        cfg: the ``selfmod.*`` switches.
        norm_eps: epsilon of the output RMSNorm.
    """

    def __init__(self, d_model: int, cfg: SelfModConfig, norm_eps: float = 1e-6):
        super().__init__()
        cfg.validate()
        cfg.check_width(d_model)
        self.cfg = cfg
        self.d_model, self.n_heads = d_model, cfg.heads
        self.head_dim = d_model // cfg.heads
        self.hidden = (cfg.memory_hidden or d_model) // cfg.heads
        self.proj_names = tuple(n for n, on in (("k", cfg.adaptive_k), ("v", cfg.adaptive_v), ("q", cfg.adaptive_q)) if on)
        self.static_names = tuple(n for n in ("q", "k", "v") if n not in self.proj_names)
        self.gate_names = ("eta", "alpha") if cfg.weight_decay else ("eta",)
        self.specs = {g: cfg.memory_spec(g) for g in GROUPS}
        self.groups = tuple(g for g in GROUPS if g != "proj" or self.proj_names)
        h, dh, hid = cfg.heads, self.head_dim, self.hidden
        sizes = {"proj": len(self.proj_names) * h, "gate": len(self.gate_names) * h, "mem": h}
        outs = {"proj": dh, "gate": 1, "mem": dh}
        # Meta-learned initial states θ_{□,0} (NL-L §8.1), slow parameters without a batch axis (D2).
        self.initial = nn.ModuleDict({
            g: nn.ParameterDict({"W1": nn.Parameter(torch.zeros(sizes[g], outs[g], hid)),
                                 "W2": nn.Parameter(torch.zeros(sizes[g], hid, dh))})
            for g in self.groups})
        self.static = nn.Linear(d_model, len(self.static_names) * d_model, bias=False) if self.static_names else None
        streams = 0 if cfg.conv == "none" else (3 if cfg.conv == "qkv" else 1)
        channels = streams * d_model
        self.conv = nn.Conv1d(channels, channels, CONV_WIDTH, groups=channels, bias=False) if streams else None
        self.pointwise = nn.ModuleList(nn.Linear(d_model, d_model, bias=False) for _ in range(streams)) \
            if cfg.conv_pointwise else None
        self.gate_bias = nn.Parameter(torch.zeros(len(self.gate_names), h))
        self.beta = nn.Linear(d_model, h) if cfg.momentum == "data" else None
        self.beta_logit = nn.Parameter(torch.zeros(h)) if cfg.momentum == "scalar" else None
        self.out_norm = RMSNorm(dh, norm_eps)
        self.gate = nn.Linear(d_model, d_model, bias=False) if cfg.output_gate == "sigmoid" else None
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.reset_special_parameters()

    def reset_special_parameters(self) -> None:
        """Memories near the identity (D12), gate biases at their initial values (D8, D9), 1×1 convs at I."""
        for group in self.initial.values():
            nn.init.normal_(group["W2"], std=1 / math.sqrt(self.head_dim))
            nn.init.normal_(group["W1"], std=self.cfg.memory_out_init)
        inits = {"eta": self.cfg.eta_init, "alpha": self.cfg.alpha_init}
        with torch.no_grad():
            for i, name in enumerate(self.gate_names):
                self.gate_bias[i].fill_(logit(inits[name]))
            if self.beta is not None:
                self.beta.bias.fill_(logit(self.cfg.beta_init))
            if self.beta_logit is not None:
                self.beta_logit.fill_(logit(self.cfg.beta_init))
        # The 1×1 convolution starts as the identity, so switching it on keeps the initial function.
        for lin in self.pointwise or ():
            nn.init.eye_(lin.weight)

    # ---- state -------------------------------------------------------------------------------

    def initial_state(self, batch_size: int) -> State:
        """Fresh state as broadcast views of the initial weights (differentiable w.r.t. them), zero momenta."""
        state = {}
        for g in self.groups:
            for name, t in init_memory_state(self.specs[g], dict(self.initial[g]), batch_size).items():
                state[f"{g}.{name}"] = t
        if self.conv is not None:
            w = self.initial["mem"]["W1"]
            state["conv"] = w.new_zeros(batch_size, CONV_WIDTH - 1, self.conv.in_channels)
        return state

    def init_state(self, batch_size: int, device: torch.device | str | None, dtype: torch.dtype | None) -> State:
        """A fresh state with materialised tensors (so it can be saved), differentiable w.r.t. θ₀ (D18)."""
        return {k: v.to(device=device, dtype=dtype).contiguous() for k, v in self.initial_state(batch_size).items()}

    def group_state(self, state: State, group: str) -> State:
        return {n: state[f"{group}.{n}"] for n in self.specs[group].state_names}

    # ---- generation (shared by the fast path and the reference) -------------------------------

    def input_features(self, x: Tensor, cache: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The memories' input: x, or conv(x) with ``conv="input"``. x: (B, n, d) -> (B, n, d), cache."""
        if self.cfg.conv != "input":
            return x, cache
        x, cache = causal_depthwise_conv(x, self.conv.weight, cache)
        if self.pointwise is not None:
            x = self.pointwise[0](x)
        return x, cache

    def finish_qkv(self, raw: dict[str, Tensor], cache: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Raw q, k, v (each (B, n, d)) -> conv, φ, L2 norms, in heads (B, H, n, d/H) (D11).

        q and k are always L2-normalised; v only with ``v_norm="l2"``.
        """
        parts = [raw["q"], raw["k"], raw["v"]]
        if self.cfg.conv == "qkv":
            conv, cache = causal_depthwise_conv(torch.cat(parts, dim=-1), self.conv.weight, cache)
            parts = list(conv.chunk(3, dim=-1))
            if self.pointwise is not None:
                parts = [lin(p) for lin, p in zip(self.pointwise, parts)]
        if self.cfg.qkv_activation == "silu":
            parts = [F.silu(p) for p in parts]
        q, k, v = (split_heads(p, self.n_heads) for p in parts)
        if self.cfg.v_norm == "l2":
            v = F.normalize(v, dim=-1)
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, cache

    def gates(self, pre: Tensor) -> tuple[Tensor, Tensor | None]:
        """Scalar-memory outputs (B, G·H, n) -> η_t = η_max·sigmoid(· + b_η), α_t (or None) (D8)."""
        pre = pre.unflatten(1, (len(self.gate_names), self.n_heads)) + self.gate_bias[None, :, :, None]
        eta = self.cfg.eta_max * torch.sigmoid(pre[:, 0])
        return eta, (torch.sigmoid(pre[:, 1]) if self.cfg.weight_decay else None)

    def momentum_gate(self, xs: Tensor) -> Tensor | None:
        """β_t (B, H, n) from the memories' input xs (B, n, d), or None without momentum (D9)."""
        if self.beta is not None:
            return torch.sigmoid(self.beta(xs)).transpose(1, 2)
        if self.beta_logit is not None:
            b, n, _ = xs.shape
            return torch.sigmoid(self.beta_logit)[None, :, None].expand(b, -1, n)
        return None

    def output(self, o: Tensor, x: Tensor) -> Tensor:
        """o: (B, H, T, d/H) memory reads, x: (B, T, d) block input -> W_o(RMSNorm(o) ⊙ sigmoid(W_g x))."""
        o = merge_heads(self.out_norm(o))
        if self.gate is not None:
            o = o * torch.sigmoid(self.gate(x))
        return self.out(o)

    def generate(self, xs: Tensor, static: dict[str, Tensor], proj_b: State | None, gate_b: State,
                 cache: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """Eqs 83/94 for the tokens of one ``chunk_size_other`` chunk, from the boundary states.

        Args:
            xs: (B, n, d) memory inputs; static: name -> (B, n, d) static projections;
            proj_b, gate_b: boundary weights of the generating memories; cache: conv inputs.

        Returns:
            q, k, v (B, H, n, d/H), η, α (B, H, n) (α None without weight decay), the new conv cache.
        """
        xh = split_heads(xs, self.n_heads)
        raw = dict(static)
        if self.proj_names:
            gen = memory_apply(self.specs["proj"], proj_b, repeat_groups(xh, len(self.proj_names)))
            for name, part in zip(self.proj_names, gen.chunk(len(self.proj_names), dim=1)):
                raw[name] = merge_heads(part)
        q, k, v, cache = self.finish_qkv(raw, cache)
        pre = memory_apply(self.specs["gate"], gate_b, repeat_groups(xh, len(self.gate_names))).squeeze(-1)
        eta, alpha = self.gates(pre)
        return q, k, v, eta, alpha, cache

    def static_projections(self, xs: Tensor) -> dict[str, Tensor]:
        """The non-adaptive projections (W_q x, …) of xs (B, T, d): name -> (B, T, d)."""
        if self.static is None:
            return {}
        return dict(zip(self.static_names, self.static(xs).chunk(len(self.static_names), dim=-1)))

    def group_sizes(self, group: str) -> int:
        return len(self.proj_names) if group == "proj" else len(self.gate_names) if group == "gate" else 1

    # ---- fast path ----------------------------------------------------------------------------

    def forward(self, x: Tensor, state: State | None = None, pos: int = 0,
                keep_state: bool = True) -> tuple[Tensor, State]:
        """x: (B, T, d) at absolute positions pos.. -> (y: (B, T, d), new state; {} without ``keep_state``).

        Two passes. Generation runs once per ``chunk_size_other`` chunk, from the boundary states of
        the generating memories, and each of their groups is then written by one state-only
        :func:`memory_scan` call (their reads are never used: generation reads boundaries). Nothing
        in that loop reads the main memory, so it runs afterwards over the whole call as one scan on
        its finer grid, with its self-generated targets v̂ = M_memory,b(v) (Eq 95, D7) built inside
        each of its chunks. ``keep_state=False`` (the caller discards the state) skips the writes
        that only the returned state would hold: the generating memories' last chunk and the main
        memory's.
        """
        if state is None:
            state = self.initial_state(x.shape[0])
        cfg = self.cfg
        gen = {g: self.group_state(state, g) for g in self.groups if g != "mem"}
        xs, cache = self.input_features(x, state.get("conv"))
        bounds = chunk_bounds(pos, x.shape[1], cfg.chunk_size_other)
        sizes = [end - start for start, end in bounds]
        # split once (not slicing in the loop): the backward of a slice fills a full-length zero tensor.
        xs_parts = xs.split(sizes, dim=1)
        static_parts = {n: t.split(sizes, dim=1) for n, t in self.static_projections(xs).items()}
        beta = self.momentum_gate(xs)
        beta_parts = [None] * len(sizes) if beta is None else beta.split(sizes, dim=-1)
        cols: list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]] = []
        for i, (start, _) in enumerate(bounds):
            at = pos + start
            bnd = {g: boundary_weights(gen[g], at, cfg.chunk_size_other) for g in gen}
            q, k, v, eta, alpha, cache = self.generate(xs_parts[i], {n: p[i] for n, p in static_parts.items()},
                                                       bnd.get("proj"), bnd["gate"], cache)
            eta = normalized_eta(eta, k) if cfg.dgd_normalize else eta
            if keep_state or i < len(bounds) - 1:
                gen = {g: self.write_group(g, mem, k, v, eta, alpha, beta_parts[i], at) for g, mem in gen.items()}
            cols.append((q, k, v, eta, alpha))
        q, k, v = (torch.cat(c, dim=2) for c in list(zip(*cols))[:3])
        eta = torch.cat([c[3] for c in cols], dim=-1)
        alpha = None if cols[0][4] is None else torch.cat([c[4] for c in cols], dim=-1)
        o, mem = self.main_memory(self.group_state(state, "mem"), q, k, v, eta, alpha, beta, pos, keep_state)
        if not keep_state:
            return self.output(o, x), {}
        new_state = {f"{g}.{n}": t for g in gen for n, t in gen[g].items()}
        new_state.update({f"mem.{n}": t for n, t in mem.items()})
        if cache is not None:
            new_state["conv"] = cache
        return self.output(o, x), new_state

    def write_group(self, group: str, mem: State, k: Tensor, v: Tensor, eta: Tensor, alpha: Tensor | None,
                    beta: Tensor | None, pos: int) -> State:
        """Write the memories of a generating group over one chunk (Eqs 84–88, D4, D6, D7, D9).

        Its G memories share the keys, the targets' input v and the gates, so the state is viewed as
        (B, G, H, ...) against keys (B, 1, H, n, d/H): one state-only, self-valued scan for the group,
        with the chunk's coefficients and K Kᵀ computed once for all G memories.
        """
        reps = self.group_sizes(group)
        view = {n: t.unflatten(1, (reps, self.n_heads)) for n, t in mem.items()}
        k1, v1 = k.unsqueeze(1), v.unsqueeze(1)
        gates = (None if g is None else g.unsqueeze(1) for g in (eta, alpha, beta))
        anchor = self.anchor(group, (reps, self.n_heads))
        _, new = memory_scan(self.specs[group], view, k1, k1, v1, *gates, pos=pos, outputs=False, self_values=True,
                             anchor=anchor, tag=group)
        return {n: t.flatten(1, 2) for n, t in new.items()}

    def anchor(self, group: str, heads: tuple[int, ...] | None = None) -> State | None:
        """The retention target of a group under ``retain="initial"``: its initial weights, with the
        head axis unflattened to ``heads`` (the (G, H) view of :meth:`write_group`); None otherwise."""
        if self.cfg.retain != "initial":
            return None
        return {n: (w if heads is None else w.unflatten(0, heads)) for n, w in self.initial[group].items()}

    def main_memory(self, mem: State, q: Tensor, k: Tensor, v: Tensor, eta: Tensor, alpha: Tensor | None,
                    beta: Tensor | None, pos: int, keep_state: bool = True) -> tuple[Tensor, State]:
        """The output memory over the whole call, on the ``chunk_size_memory`` grid (Eqs 94–95, D5, D7).

        ``read="intra_chunk"`` is one self-valued scan reading M_{t−1}(q_t). ``read="boundary"`` reads
        M_b(q_t), the boundary state of each chunk, so it runs one state-only scan per chunk.
        q, k, v: (B, H, T, d/H); gates (B, H, T). Returns o (B, H, T, d/H) and the new state ({}
        without ``keep_state``, which skips the last chunk's write).
        """
        spec = self.specs["mem"]
        if self.cfg.read == "intra_chunk":
            return memory_scan(spec, mem, q, k, v, eta, alpha, beta, pos=pos, self_values=True, final_state=keep_state,
                               anchor=self.anchor("mem"), tag="mem")
        bounds = chunk_bounds(pos, q.shape[2], spec.chunk_size)
        sizes = [end - start for start, end in bounds]
        parts = [t.split(sizes, dim=2) for t in (q, k, v)]
        gates = [None if g is None else g.split(sizes, dim=-1) for g in (eta, alpha, beta)]
        outs = []
        for i, (start, _) in enumerate(bounds):
            qi, ki, vi = (p[i] for p in parts)
            outs.append(memory_apply(spec, boundary_weights(mem, pos + start, spec.chunk_size), qi))
            _, mem = memory_scan(spec, mem, qi, ki, vi, *(None if g is None else g[i] for g in gates),
                                 pos=pos + start, outputs=False, self_values=True,
                                 final_state=keep_state or i < len(bounds) - 1, anchor=self.anchor("mem"), tag="mem")
        return torch.cat(outs, dim=2), mem
