"""The self-modifying Titans module: generation from boundary states, one memory scan per group."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nestlearn.layers.norm import RMSNorm
from nestlearn.layers.self_modifying.config import GROUPS, SelfModConfig
from nestlearn.layers.titans import causal_depthwise_conv
from nestlearn.memory import boundary_weights, chunk_bounds, init_memory_state, logit, memory_apply, split_chunks
from nestlearn.memory.step import memory_forward

Tensor = torch.Tensor
State = dict[str, Tensor]

CONV_WIDTH = 4  # "local convolutions with window size of 4" (NL-L §8.3)


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
        :func:`memory_scan` call (their reads are never used: generation reads boundaries; a
        one-token call, as in decoding, takes :func:`~nestlearn.memory.step.memory_step`). Nothing
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
        static = self.static_projections(xs)
        xs_parts, *static_parts = split_chunks(bounds, (xs, *static.values()), dim=1)
        static_parts = dict(zip(static, static_parts))
        beta = self.momentum_gate(xs)
        beta_parts = [None] * len(bounds) if beta is None else split_chunks(bounds, (beta,), dim=-1)[0]
        cols: list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]] = []
        for i, (start, _) in enumerate(bounds):
            at = pos + start
            bnd = {g: boundary_weights(gen[g], at, cfg.chunk_size_other, ("W1", "W2")) for g in gen}
            q, k, v, eta, alpha, cache = self.generate(xs_parts[i], {n: p[i] for n, p in static_parts.items()},
                                                       bnd.get("proj"), bnd["gate"], cache)
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
        _, new = memory_forward(self.specs[group], view, k1, k1, v1, *gates, pos=pos, outputs=False, self_values=True,
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

        One self-valued scan reading M_{t−1}(q_t) (``read="intra_chunk"``) or M_b(q_t), the boundary
        state of each chunk (``read="boundary"``). q, k, v: (B, H, T, d/H); gates (B, H, T). Returns
        o (B, H, T, d/H) and the new state ({} without ``keep_state``, which skips the last chunk's write).
        """
        return memory_forward(self.specs["mem"], mem, q, k, v, eta, alpha, beta, pos=pos, self_values=True,
                              final_state=keep_state, anchor=self.anchor("mem"), tag="mem")
