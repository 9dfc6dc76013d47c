"""Hope: self-modifying Titans followed by a Continuum Memory System in every block (NL-L §8.3).

Block (spec §5.6–5.7, §6.5; Eqs 94–97; D11):

    h = x + SelfModTitans(RMSNorm(x))        (Eqs 94–96, :mod:`nestlearn.layers.self_modifying`)
    y = CMS(h)                               (Eq 97: the sequential chain, slowest level first, D14–D15;
                                              each level is a pre-norm residual MLP)

Both parts are recurrent, so a stream is processed segment by segment with the carried state
(``bounded_context = False``). State keys: ``selfmod.*`` and ``cms.*``.

Table 6 ablations as config overrides (NL-L §9.6, spec §9.8):

* w/o DGD: ``model.selfmod.inner_rule=gd``;  w/o momentum: ``model.selfmod.momentum=off``;
* w/o weight decay: ``model.selfmod.weight_decay=false``;
* w/o inner-projection k / v: ``model.selfmod.adaptive_k=false`` / ``model.selfmod.adaptive_v=false``
  (static linear projections); w/o inner-projection q: ``model.selfmod.adaptive_q=false`` (D10);
* w/o CMS: ``model.use_cms=false`` replaces the CMS chain by one static pre-norm residual SwiGLU MLP
  (the MLP of Transformer++ and Titans), so the block keeps a channel mixer but nothing in it learns
  in context [Interp: the paper does not say what replaces CMS].

CMS update signal (D13): ``model.cms.signal=kv`` (default), ``lss`` (the model's own next-token
loss; the model then runs through :mod:`nestlearn.models.lss`) or ``optimizer`` (levels are slow
parameters stepped every ``model.cms.step_periods[ℓ]`` optimiser steps).

Stability: with the spec's unnormalised v (``model.selfmod.v_norm=none``) the self-generated targets
grow until the forward pass overflows, a few hundred tokens into a sequence even at initialisation;
the default ``v_norm=l2`` (a project decision, see :class:`~nestlearn.layers.self_modifying.SelfModConfig`)
keeps it bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from nestlearn.layers.cms import CMS, CMSConfig
from nestlearn.layers.mlp import SwiGLU, swiglu_hidden
from nestlearn.layers.norm import RMSNorm
from nestlearn.layers.self_modifying import SelfModConfig, SelfModifyingTitans
from nestlearn.models.lm import LMConfig, register_family

State = dict[str, torch.Tensor]


@register_family("hope")
@dataclass
class HopeConfig(LMConfig):
    """Attributes:
        selfmod: the self-modifying Titans mixer of every block (``model.selfmod.*``, D3–D12).
        cms: the Continuum Memory System of every block (``model.cms.*``, D13–D16).
        use_cms: False is the ablation "w/o CMS" (a static SwiGLU MLP instead, module docstring).
    """

    bounded_context = False

    selfmod: SelfModConfig = field(default_factory=SelfModConfig)
    cms: CMSConfig = field(default_factory=CMSConfig)
    use_cms: bool = True

    def validate(self) -> None:
        super().validate()
        self.selfmod.validate("model.selfmod")
        self.selfmod.check_width(self.d_model, "model.selfmod")
        if self.use_cms:
            self.cms.validate("model.cms")

    def build_block(self, layer_idx: int) -> nn.Module:
        return HopeBlock(self)

    def sequence_driver(self):
        """The ``lss`` driver (:func:`nestlearn.models.lss.lss_forward`) when CMS levels learn from the model's loss."""
        if self.use_cms and self.cms.signal == "lss" and self.cms.eta_max > 0:
            from nestlearn.models.lss import lss_forward

            return lss_forward
        return None


class HopeBlock(nn.Module):
    """x + SelfModTitans(RMSNorm(x)), then CMS (or, without CMS, + SwiGLU(RMSNorm(·)))."""

    def __init__(self, cfg: HopeConfig):
        super().__init__()
        self.mixer_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.selfmod = SelfModifyingTitans(cfg.d_model, cfg.selfmod, cfg.norm_eps)
        self.cms = CMS(cfg.d_model, cfg.cms, cfg.norm_eps) if cfg.use_cms else None
        self.mlp_norm = None if cfg.use_cms else RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = None if cfg.use_cms else SwiGLU(cfg.d_model, swiglu_hidden(cfg.d_model))

    def init_state(self, batch_size: int, device: torch.device | str | None, dtype: torch.dtype | None) -> State:
        state = {f"selfmod.{k}": v for k, v in self.selfmod.init_state(batch_size, device, dtype).items()}
        if self.cms is not None:
            state.update({f"cms.{k}": v for k, v in self.cms.init_state(batch_size, device, dtype).items()})
        return state

    def forward(self, x: torch.Tensor, state: State | None = None, pos: int = 0, keep_state: bool = True,
                **cms_inputs) -> tuple[torch.Tensor, State]:
        """x: (B, T, d) at absolute positions pos.. -> (same shape, {selfmod.*, cms.*}; {} without ``keep_state``).

        ``cms_inputs`` (``u``, ``tape``) go to :meth:`~nestlearn.layers.cms.CMS.forward` (``lss`` signal).
        """
        sm_state = cms_state = None
        if state is not None:
            sm_state = {k[8:]: v for k, v in state.items() if k.startswith("selfmod.")}
            cms_state = {k[4:]: v for k, v in state.items() if k.startswith("cms.")}
        h, sm_state = self.selfmod(self.mixer_norm(x), sm_state, pos, keep_state)
        x = x + h
        new_state = {f"selfmod.{k}": v for k, v in sm_state.items()}
        if self.cms is None:
            return x + self.mlp(self.mlp_norm(x)), new_state
        y, cms_state = self.cms(x, cms_state, pos, keep_state=keep_state, **cms_inputs)
        new_state.update({f"cms.{k}": v for k, v in cms_state.items()})
        return y, new_state
