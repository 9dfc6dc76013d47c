"""Linear-memory baselines: linear attention, DeltaNet, Gated DeltaNet (configs of the one primitive).

Each is the :class:`~nestlearn.models.titans.MemoryBlock` stack whose layer is a
:class:`~nestlearn.layers.titans.MemoryLayer` with a linear memory M_t ∈ ℝ^{d_v×d_k} per head and the
dot-product objective ℓ = −⟨M k, v⟩ [NL-L Eqs 14–18, 64–65]; its inner gradient −v kᵀ does not depend
on the state, so the chunk size changes only speed:

* ``linear_attention``: GD, η ≡ 1, no decay, no convolution — M_t = M_{t−1} + v_t k_tᵀ, y_t = M_t q_t
  [NL-L Eqs 15–16];
* ``deltanet``: DGD, the delta rule with a learned η_t — M_t = M_{t−1}(I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ
  [NL-L Eq 65];
* ``gated_deltanet``: DGD with a learned retention gate α_t — M_t = M_{t−1}(α_t I − η_t k_t k_tᵀ) +
  η_t v_t k_tᵀ ([NL-L Eq 92] sign-corrected, [T App. C Eq 33] with η = 0).

``model.eigen=signed`` doubles the step range, so the transition along k reaches −1 (design.md S2).
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
