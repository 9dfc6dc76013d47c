"""Causal multi-head softmax attention with RoPE and a KV cache (the token mixer of Transformer++)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nestlearn.layers.rope import apply_rope, rope_angles

State = dict[str, torch.Tensor]


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention through ``scaled_dot_product_attention``.

    The state is the KV cache ``{"k", "v"}``, each (batch, heads, cached_seq, head_dim). With a cache,
    new queries attend to every cached key and causally to the new ones, so running a sequence in
    pieces with the returned state equals one pass over the whole.

    With ``window`` set, each query sees only the last ``window`` positions (itself included):
    sliding-window attention, SW-Attn of Titans MAG/MAL [T Eqs 27, 31]; the cache then keeps only the
    last ``window − 1`` keys, so the state stays bounded on any stream length.

    Args:
        d_model: model width.
        n_heads: number of heads; must divide d_model.
        rope_base: RoPE wavelength base.
        window: sliding-window length, or None for full causal attention.
    """

    def __init__(self, d_model: int, n_heads: int, rope_base: float = 10000.0, window: int | None = None):
        super().__init__()
        self.window = window
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.rope_base = rope_base
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, state: State | None = None, pos: int = 0,
                prefix: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, State]:
        """x: (batch, seq, d_model) at absolute positions pos..pos+seq-1 -> (output, new KV cache).

        ``prefix``: optional (keys, values), each (batch or 1, heads, n_prefix, head_dim), that every
        query sees regardless of the window and that are not cached (Titans' persistent memory
        [T §3.3] as an always-visible attention prefix).
        """
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = rope_angles(torch.arange(pos, pos + t, device=x.device), self.head_dim, self.rope_base)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if state is not None:
            k = torch.cat((state["k"], k), dim=2)
            v = torch.cat((state["v"], v), dim=2)
        past = k.shape[2] - t
        if self.window is not None or prefix is not None:
            return self._masked(q, k, v, past, prefix)
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif t == 1:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            # is_causal aligns the mask top-left; with a cache the diagonal is offset by `past`.
            mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(b, t, d)
        return self.out(y), {"k": k, "v": v}

    def _masked(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int,
                prefix: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, State]:
        """Attention with an explicit mask: causal, optionally windowed, optionally with a visible prefix."""
        b, _, t, _ = q.shape
        query_pos = torch.arange(past, past + t, device=q.device)[:, None]
        key_pos = torch.arange(past + t, device=q.device)[None, :]
        mask = key_pos <= query_pos
        if self.window is not None:
            mask = mask & (key_pos > query_pos - self.window)
        keys, values = k, v
        if prefix is not None:
            pk, pv = (p.expand(b, -1, -1, -1) for p in prefix)
            keys, values = torch.cat((pk, k), dim=2), torch.cat((pv, v), dim=2)
            mask = torch.cat((torch.ones(t, pk.shape[2], dtype=torch.bool, device=q.device), mask), dim=1)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        y = y.transpose(1, 2).reshape(b, t, -1)
        if self.window is not None:
            start = max(k.shape[2] - (self.window - 1), 0)
            k, v = k[:, :, start:], v[:, :, start:]
        return self.out(y), {"k": k, "v": v}
