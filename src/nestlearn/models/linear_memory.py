"""Linear-memory baselines: linear attention, DeltaNet, Gated DeltaNet (configs of the one primitive).

Each is the :class:`~nestlearn.models.titans.MemoryBlock` stack with a linear memory and the
dot-product objective (see :mod:`nestlearn.layers.linear_memory` for the update rules):

* ``linear_attention``: GD, η ≡ 1, no decay, no convolution [NL-L Eqs 14–18];
* ``deltanet``: DGD (the delta rule) with a learned η_t [NL-L Eq 65];
* ``gated_deltanet``: DGD with a learned retention gate α_t ([NL-L Eq 92] sign-corrected).
"""

from __future__ import annotations

from dataclasses import dataclass

from nestlearn.models.lm import register_family
from nestlearn.models.titans import MemoryLMConfig


@register_family("linear_attention")
@dataclass
class LinearAttentionConfig(MemoryLMConfig):
    """Unnormalised linear attention with L2-normalised q and k."""

    memory_kind: str = "linear"
    objective: str = "dot"
    rule: str = "gd"
    momentum: str = "none"
    eta_mode: str = "one"
    decay: bool = False
    conv_size: int = 0


@register_family("deltanet")
@dataclass
class DeltaNetConfig(MemoryLMConfig):
    """DeltaNet: M_t = M_{t−1}(I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ."""

    memory_kind: str = "linear"
    objective: str = "dot"
    rule: str = "dgd"
    momentum: str = "none"
    eta_init: float = 0.5
    decay: bool = False


@register_family("gated_deltanet")
@dataclass
class GatedDeltaNetConfig(MemoryLMConfig):
    """Gated DeltaNet: M_t = M_{t−1}(α_t I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ."""

    memory_kind: str = "linear"
    objective: str = "dot"
    rule: str = "dgd"
    momentum: str = "none"
    eta_init: float = 0.5
    decay: bool = True
