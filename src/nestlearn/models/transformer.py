"""Transformer++: the attention baseline of the paper's tables (RMSNorm, RoPE, SwiGLU, no biases)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nestlearn.errors import ConfigError, check_positive
from nestlearn.layers.attention import CausalSelfAttention
from nestlearn.layers.mlp import SwiGLU, swiglu_hidden
from nestlearn.layers.norm import RMSNorm
from nestlearn.models.lm import LMConfig, register_family


@register_family("transformer")
@dataclass
class TransformerConfig(LMConfig):
    """Transformer++.

    Attributes:
        n_heads: attention heads; must divide d_model into an even head size.
        ffn_hidden: SwiGLU inner width; None means 8/3·d_model rounded up to a multiple of 32.
        rope_base: RoPE wavelength base.
    """

    n_heads: int = 4
    ffn_hidden: int | None = None
    rope_base: float = 10000.0

    def validate(self) -> None:
        super().validate()
        check_positive("model.n_heads", self.n_heads)
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError("model.n_heads", f"must divide model.d_model={self.d_model} into an even head size, got {self.n_heads}")
        if self.ffn_hidden is not None:
            check_positive("model.ffn_hidden", self.ffn_hidden)
        check_positive("model.rope_base", self.rope_base)

    def build_block(self, layer_idx: int) -> nn.Module:
        return TransformerBlock(self)


class TransformerBlock(nn.Module):
    """x + Attn(RMSNorm(x)), then + SwiGLU(RMSNorm(·)). State: the attention KV cache."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg.d_model, cfg.n_heads, cfg.rope_base)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.ffn_hidden or swiglu_hidden(cfg.d_model))

    def init_state(self, batch_size: int, device: torch.device | str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        shape = (batch_size, self.attn.n_heads, 0, self.attn.head_dim)
        return {"k": torch.zeros(shape, device=device, dtype=dtype), "v": torch.zeros(shape, device=device, dtype=dtype)}

    def forward(self, x: torch.Tensor, state: dict[str, torch.Tensor] | None = None,
                pos: int = 0, keep_state: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x: (batch, seq, d_model) -> (same shape, KV cache; {} without ``keep_state``)."""
        h, state = self.attn(self.attn_norm(x), state, pos)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), (state if keep_state else {})
