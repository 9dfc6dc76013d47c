"""Hope-Attention: softmax attention followed by a Continuum Memory System in every block (NL-L §8.3).

Fig. 5 of the paper puts Hope's block beside a Transformer block: attention → MLP becomes
(here) attention → CMS, the chain of Eq 70 with levels written at their own frequencies (Eq 71).
Attention keeps RoPE and its KV cache (D11); the CMS state holds every level's fast weights.

With ``cms.level_assignment = "every_layer"`` every block holds the whole chain. With
``"depth_groups"`` (D17, spec §6.4) block i holds one level, the one of its contiguous depth group
(shallow layers slowest): the layout of a model stacked from a pre-trained Transformer++
(:func:`nestlearn.models.stacking.from_transformer`), where each layer's MLP is its level's initial state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from nestlearn.errors import ConfigError, check_positive
from nestlearn.layers.attention import CausalSelfAttention
from nestlearn.layers.cms import CMS, CMSConfig, depth_group_chunk_sizes
from nestlearn.layers.norm import RMSNorm
from nestlearn.models.lm import LMConfig, register_family


@register_family("hope_attention")
@dataclass
class HopeAttentionConfig(LMConfig):
    """Attributes:
        n_heads: attention heads; must divide d_model into an even head size.
        rope_base: RoPE wavelength base.
        cms: the Continuum Memory System (``model.cms.*``): of every block, or spread over the
            blocks by depth under ``cms.level_assignment = "depth_groups"`` (see :meth:`block_cms`).
    """

    n_heads: int = 4
    rope_base: float = 10000.0
    cms: CMSConfig = field(default_factory=CMSConfig)

    def validate(self) -> None:
        super().validate()
        check_positive("model.n_heads", self.n_heads)
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError("model.n_heads", f"must divide model.d_model={self.d_model} into an even head size, got {self.n_heads}")
        self.cms.validate("model.cms")
        if self.cms.level_assignment == "depth_groups":  # rejects more levels than layers, naming the field
            field = "step_periods" if self.cms.signal == "optimizer" else "chunk_sizes"
            depth_group_chunk_sizes(self.n_layers, self.cms.schedule, f"model.cms.{field}")

    def block_cms(self, layer_idx: int) -> CMSConfig:
        """The CMS of block ``layer_idx``: the whole chain, or under ``depth_groups`` (D17) the single
        level of the block's depth group (:func:`~nestlearn.layers.cms.depth_group_chunk_sizes`;
        under the ``optimizer`` signal the groups share out ``step_periods``)."""
        if self.cms.level_assignment == "every_layer":
            return self.cms
        if self.cms.signal == "optimizer":
            period = depth_group_chunk_sizes(self.n_layers, self.cms.step_periods, "model.cms.step_periods")[layer_idx]
            return dataclasses.replace(self.cms, step_periods=(period,), level_assignment="every_layer")
        chunk = depth_group_chunk_sizes(self.n_layers, self.cms.chunk_sizes)[layer_idx]
        return dataclasses.replace(self.cms, chunk_sizes=(chunk,), level_assignment="every_layer")

    def build_block(self, layer_idx: int) -> nn.Module:
        return HopeAttentionBlock(self, self.block_cms(layer_idx))

    def sequence_driver(self):
        """The ``lss`` driver (:func:`nestlearn.models.lss.lss_forward`) when CMS levels learn from the model's loss."""
        if self.cms.signal == "lss" and self.cms.eta_max > 0:
            from nestlearn.models.lss import lss_forward

            return lss_forward
        return None


class HopeAttentionBlock(nn.Module):
    """x + Attn(RMSNorm(x)), then the CMS chain (each level is a pre-norm residual MLP).

    Args:
        cfg: the model config.
        cms: this block's CMS (:meth:`HopeAttentionConfig.block_cms`).
    """

    def __init__(self, cfg: HopeAttentionConfig, cms: CMSConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg.d_model, cfg.n_heads, cfg.rope_base)
        self.cms = CMS(cfg.d_model, cms, cfg.norm_eps)

    def init_state(self, batch_size: int, device, dtype) -> dict[str, torch.Tensor]:
        shape = (batch_size, self.attn.n_heads, 0, self.attn.head_dim)
        state = {"attn.k": torch.zeros(shape, device=device, dtype=dtype),
                 "attn.v": torch.zeros(shape, device=device, dtype=dtype)}
        state.update({f"cms.{k}": v for k, v in self.cms.init_state(batch_size, device, dtype).items()})
        return state

    def forward(self, x: torch.Tensor, state: dict[str, torch.Tensor] | None = None,
                pos: int = 0, keep_state: bool = True, **cms_inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x: (batch, seq, d_model) -> (same shape, {attn.k, attn.v, cms.*}; {} without ``keep_state``).

        ``cms_inputs`` (``u``, ``tape``) go to :meth:`~nestlearn.layers.cms.CMS.forward` (``lss`` signal).
        """
        attn_state = cms_state = None
        if state is not None:
            attn_state = {"k": state["attn.k"], "v": state["attn.v"]}
            cms_state = {k[4:]: v for k, v in state.items() if k.startswith("cms.")}
        h, attn_state = self.attn(self.attn_norm(x), attn_state, pos)
        y, cms_state = self.cms(x + h, cms_state, pos, keep_state=keep_state, **cms_inputs)
        if not keep_state:
            return y, {}
        return y, {"attn.k": attn_state["k"], "attn.v": attn_state["v"],
                   **{f"cms.{k}": v for k, v in cms_state.items()}}
