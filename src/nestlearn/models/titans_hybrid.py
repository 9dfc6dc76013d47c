"""Titans hybrids [T §4.1–4.3]: memory as a context (MAC), as a gate (MAG), as a layer (MAL).

All three use N_p learnable persistent-memory tokens P [T §3.3, Eq 19] and the neural memory of
:class:`~nestlearn.layers.titans.MemoryLayer`. Project readings [Interp] where the paper is silent:

* Persistent tokens enter softmax attention as an always-visible, position-free prefix (their keys and
  values are the attention's own projections of RMSNorm(P)), so a sliding window never drops them
  (SW-Attn* "with prefix", [T Fig. 3b]). In MAG and MAL the memory also reads P first at a sequence
  start (x̃ = P ‖ x, [T Eqs 26, 29]), i.e. P is written into the memory before token 0; the memory's
  chunk grid then counts those N_p positions.
* The non-linear gate ⊗ of [T Eqs 25, 28] is o = RMSNorm(y) ⊙ sigmoid(RMSNorm(m)) with learnable
  vector gains ("normalised with learnable vector weights, followed by σ(·)", [T §4.2]).
* MAC segments are the memory's chunks (segment length = ``chunk_size``), so the retrieval
  h_t = M*_{t−1}(q_t) [T Eq 21] reads the memory's boundary state. Inside a segment, attention runs over
  [P ‖ h ‖ S] [T Eq 22] with retrieved tokens interleaved with the segment tokens (h_1, s_1, h_2, s_2, …)
  and a causal mask: token i sees P, h_{≤i} and s_{≤i}. Showing all of h to every token, as Fig. 3a
  draws it, would leak later tokens of the segment into earlier predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nestlearn.errors import check_positive
from nestlearn.layers.attention import CausalSelfAttention
from nestlearn.layers.norm import RMSNorm
from nestlearn.memory import chunk_bounds, memory_apply
from nestlearn.models.lm import register_family
from nestlearn.models.titans import MemoryLMConfig

State = dict[str, torch.Tensor]


@dataclass
class HybridConfig(MemoryLMConfig):
    """Memory-family fields plus attention ones.

    Attributes:
        n_persistent: number of persistent-memory tokens N_p (0: none, the "w/o persistent memory" ablation).
        window: sliding-window length of MAG/MAL attention (unused by MAC, whose attention spans a segment).
        rope_base: RoPE base of the attention.
    """

    momentum: str = "ema"  # as TitansConfig (design.md S1, S5)
    write_bound: float = 1.0
    n_persistent: int = 4
    window: int = 64
    rope_base: float = 10000.0

    def validate(self) -> None:
        super().validate()
        check_positive("model.n_persistent", self.n_persistent, allow_zero=True)
        check_positive("model.window", self.window)
        check_positive("model.rope_base", self.rope_base)


class _Persistent(nn.Module):
    """Learnable persistent tokens P ∈ ℝ^{N_p×d} [T Eq 19]."""

    def __init__(self, n: int, d_model: int, std: float):
        super().__init__()
        self.std = std
        self.tokens = nn.Parameter(torch.zeros(n, d_model))
        self.reset_special_parameters()

    def reset_special_parameters(self) -> None:
        nn.init.normal_(self.tokens, std=self.std)

    def attention_prefix(self, attn: CausalSelfAttention, norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(keys, values), each (1, heads, N_p, head_dim), from attn's projections of RMSNorm(P); no RoPE."""
        if self.tokens.shape[0] == 0:
            return None
        _, k, v = attn.qkv(norm(self.tokens)).view(1, -1, 3, attn.n_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        return k, v


def _gate(y: torch.Tensor, m: torch.Tensor, norm_y: RMSNorm, norm_m: RMSNorm) -> torch.Tensor:
    """o = RMSNorm(y) ⊙ sigmoid(RMSNorm(m)), the ⊗ of [T Eqs 25, 28] (module docstring)."""
    return norm_y(y) * torch.sigmoid(norm_m(m))


class _WindowedHybridBlock(nn.Module):
    """Shared parts of MAG and MAL: memory primed with P, sliding-window attention with P as prefix."""

    def __init__(self, cfg: HybridConfig):
        super().__init__()
        d = cfg.d_model
        self.n_persistent = cfg.n_persistent
        self.persistent = _Persistent(cfg.n_persistent, d, cfg.init_std)
        self.mem_norm = RMSNorm(d, cfg.norm_eps)
        self.mem = cfg.memory_layer()
        self.attn_norm = RMSNorm(d, cfg.norm_eps)
        self.attn = CausalSelfAttention(d, cfg.n_heads, cfg.rope_base, window=cfg.window)
        self.mlp_norm = RMSNorm(d, cfg.norm_eps)
        self.mlp = cfg.ffn()

    def _primed_memory(self, batch_size: int) -> State:
        """Memory state after reading P at a sequence start (x̃ = P ‖ x, [T Eqs 26, 29])."""
        if self.n_persistent == 0:
            return {f"mem.{n}": t for n, t in self.mem.initial_memory(batch_size).items()}
        p = self.mem_norm(self.persistent.tokens).unsqueeze(0).expand(batch_size, -1, -1)
        _, state = self.mem(p, None, 0)
        return state

    def init_state(self, batch_size: int, device: torch.device | str, dtype: torch.dtype) -> State:
        if self.n_persistent == 0:
            state = self.mem.init_state(batch_size, device, dtype)
        else:
            state = {k: v.to(device=device, dtype=dtype).contiguous() for k, v in self._primed_memory(batch_size).items()}
        shape = (batch_size, self.attn.n_heads, 0, self.attn.head_dim)
        state["attn.k"] = torch.zeros(shape, device=device, dtype=dtype)
        state["attn.v"] = torch.zeros(shape, device=device, dtype=dtype)
        return state

    def _split(self, state: State | None, batch_size: int) -> tuple[State, State | None]:
        if state is None:
            return self._primed_memory(batch_size), None
        mem = {k: v for k, v in state.items() if not k.startswith("attn.")}
        return mem, {"k": state["attn.k"], "v": state["attn.v"]}

    def _memory(self, h: torch.Tensor, mem: State, pos: int, keep_state: bool) -> tuple[torch.Tensor, State]:
        return self.mem(h, mem, pos + self.n_persistent, keep_state)

    def _attention(self, h: torch.Tensor, cache: State | None, pos: int) -> tuple[torch.Tensor, State]:
        prefix = self.persistent.attention_prefix(self.attn, self.attn_norm)
        return self.attn(h, cache, pos, prefix=prefix)

    @staticmethod
    def _join(mem: State, cache: State) -> State:
        return {**mem, "attn.k": cache["k"], "attn.v": cache["v"]}


@register_family("titans_mag")
@dataclass
class TitansMAGConfig(HybridConfig):
    """Titans MAG: sliding-window attention and the neural memory in parallel, joined by a gate [T §4.2]."""

    def build_block(self, layer_idx: int) -> nn.Module:
        return MAGBlock(self)


class MAGBlock(_WindowedHybridBlock):
    """h = RMSNorm(x); x + RMSNorm(SW-Attn*(h)) ⊙ σ(RMSNorm(M(h))) [T Eqs 26–28]; then + SwiGLU."""

    def __init__(self, cfg: HybridConfig):
        super().__init__(cfg)
        self.norm_y = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.norm_m = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, x: torch.Tensor, state: State | None = None, pos: int = 0,
                keep_state: bool = True) -> tuple[torch.Tensor, State]:
        """x: (B, T, d) -> (same shape, new state; {} without ``keep_state``)."""
        mem, cache = self._split(state, x.shape[0])
        y, cache = self._attention(self.attn_norm(x), cache, pos)
        m, mem = self._memory(self.mem_norm(x), mem, pos, keep_state)
        x = x + _gate(y, m, self.norm_y, self.norm_m)
        return x + self.mlp(self.mlp_norm(x)), (self._join(mem, cache) if keep_state else {})


@register_family("titans_mal")
@dataclass
class TitansMALConfig(HybridConfig):
    """Titans MAL: the neural memory as a layer before sliding-window attention [T §4.3]."""

    def build_block(self, layer_idx: int) -> nn.Module:
        return MALBlock(self)


class MALBlock(_WindowedHybridBlock):
    """x + M(RMSNorm(x)), then + SW-Attn*(RMSNorm(·)) [T Eqs 29–31], then + SwiGLU."""

    def forward(self, x: torch.Tensor, state: State | None = None, pos: int = 0,
                keep_state: bool = True) -> tuple[torch.Tensor, State]:
        """x: (B, T, d) -> (same shape, new state; {} without ``keep_state``)."""
        mem, cache = self._split(state, x.shape[0])
        m, mem = self._memory(self.mem_norm(x), mem, pos, keep_state)
        x = x + m
        y, cache = self._attention(self.attn_norm(x), cache, pos)
        x = x + y
        return x + self.mlp(self.mlp_norm(x)), (self._join(mem, cache) if keep_state else {})


@register_family("titans_mac")
@dataclass
class TitansMACConfig(HybridConfig):
    """Titans MAC: retrieve from memory, attend over [P ‖ h ‖ segment], write the attention output [T §4.1]."""

    def build_block(self, layer_idx: int) -> nn.Module:
        return MACBlock(self)


class MACBlock(nn.Module):
    """Per segment S (the memory's chunk), in the paper's order [T Eqs 21–25]:

        h = W_r M*_{b}(q),  q = L2norm(W_Q RMSNorm(S))        retrieve, no write        (21)
        y = Attn(P ‖ interleave(h, RMSNorm(S)))[segment slots]                           (22–23)
        m, M ← M(RMSNorm(y)) with writes (reads after each write, M*_t(y_t))             (24)
        x ← x + RMSNorm(y) ⊙ σ(RMSNorm(m))                                              (25)

    then x + SwiGLU(RMSNorm(x)). State: the memory's, plus the current segment's attention cache.
    """

    def __init__(self, cfg: HybridConfig):
        super().__init__()
        d = cfg.d_model
        self.segment = cfg.chunk_size
        self.persistent = _Persistent(cfg.n_persistent, d, cfg.init_std)
        self.attn_norm = RMSNorm(d, cfg.norm_eps)
        self.retrieve_q = nn.Linear(d, d, bias=False)
        self.retrieve_out = nn.Linear(d, d, bias=False)
        self.attn = CausalSelfAttention(d, cfg.n_heads, cfg.rope_base)
        self.mem_norm = RMSNorm(d, cfg.norm_eps)
        self.mem = cfg.memory_layer()
        self.norm_y = RMSNorm(d, cfg.norm_eps)
        self.norm_m = RMSNorm(d, cfg.norm_eps)
        self.mlp_norm = RMSNorm(d, cfg.norm_eps)
        self.mlp = cfg.ffn()

    def init_state(self, batch_size: int, device: torch.device | str, dtype: torch.dtype) -> State:
        state = self.mem.init_state(batch_size, device, dtype)
        shape = (batch_size, self.attn.n_heads, 0, self.attn.head_dim)
        state["attn.k"] = torch.zeros(shape, device=device, dtype=dtype)
        state["attn.v"] = torch.zeros(shape, device=device, dtype=dtype)
        return state

    def _retrieve(self, h: torch.Tensor, mem: State, pos: int) -> torch.Tensor:
        """h: (B, n, d) normalised segment -> retrieved tokens (B, n, d) from the boundary memory state."""
        b, n, d = h.shape
        spec, heads = self.mem.spec, self.mem.n_heads
        suffix = "_b" if pos % spec.chunk_size else ""
        weights = {w: mem[f"mem.{w}{suffix}"] for w in spec.weight_names}
        q = F.normalize(self.retrieve_q(h).view(b, n, heads, -1).transpose(1, 2), dim=-1)
        return self.retrieve_out(memory_apply(spec, weights, q).transpose(1, 2).reshape(b, n, d))

    def forward(self, x: torch.Tensor, state: State | None = None, pos: int = 0,
                keep_state: bool = True) -> tuple[torch.Tensor, State]:
        """x: (B, T, d) -> (same shape, new state; {} without ``keep_state``)."""
        b = x.shape[0]
        if state is None:
            mem = {f"mem.{n}": t for n, t in self.mem.initial_memory(b).items()}
            cache = None
        else:
            mem = {k: v for k, v in state.items() if not k.startswith("attn.")}
            cache = {"k": state["attn.k"], "v": state["attn.v"]}
        prefix = self.persistent.attention_prefix(self.attn, self.attn_norm)
        outs = []
        for start, end in chunk_bounds(pos, x.shape[1], self.segment):
            p = pos + start
            offset = p % self.segment
            seg = x[:, start:end]
            h = self.attn_norm(seg)
            mixed = torch.stack((self._retrieve(h, mem, p), h), dim=2).flatten(1, 2)
            y, cache = self.attn(mixed, cache if offset else None, 2 * offset, prefix=prefix)
            y = y[:, 1::2]
            m, mem = self.mem(self.mem_norm(y), mem, p, keep_state or end < x.shape[1])
            outs.append(seg + _gate(y, m, self.norm_y, self.norm_m))
        x = torch.cat(outs, dim=1)
        if not keep_state:
            return x + self.mlp(self.mlp_norm(x)), {}
        if (pos + x.shape[1]) % self.segment == 0:
            shape = (b, self.attn.n_heads, 0, self.attn.head_dim)
            cache = {"k": x.new_zeros(shape), "v": x.new_zeros(shape)}
        return x + self.mlp(self.mlp_norm(x)), {**mem, "attn.k": cache["k"], "attn.v": cache["v"]}
