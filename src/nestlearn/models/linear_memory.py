"""Linear-memory baselines: linear attention, DeltaNet, Gated DeltaNet (configs of the one primitive).

Each is the :class:`~nestlearn.models.titans.MemoryBlock` stack whose layer is a
:class:`~nestlearn.layers.titans.MemoryLayer` with a linear memory M_t ∈ ℝ^{d_v×d_k} per head and the
dot-product objective ℓ = −⟨M k, v⟩ [NL-L Eqs 14–18, 64–65]; its inner gradient −v kᵀ does not depend
on the state, so the chunk size changes only speed:

* ``linear_attention``: GD, η ≡ 1, no decay, no convolution — M_t = M_{t−1} + v_t k_tᵀ, y_t = M_t q_t
  [NL-L Eqs 15–16];
* ``deltanet``: DGD, the delta rule with a learned η_t — M_t = M_{t−1}(I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ
  [NL-L Eq 65];
* ``gated_deltanet``: DGD with a learned retention gate α_t on the whole delta-rule transition, as
  Yang et al. (2024) publish Gated DeltaNet — M_t = α_t M_{t−1}(I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ
  (``model.gate_form=yang``, the default). ``model.gate_form=eq92`` selects NL-L Eq 92's form
  (sign-corrected; [T App. C Eq 33] with η = 0), α_t on the identity only —
  M_t = M_{t−1}(α_t I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ, Yang's form minus (1 − α_t) η_t M_{t−1} k_t k_tᵀ.
  Checkpoints written before the switch existed load as ``eq92``, the form they were trained with
  (design.md S12).

``model.eigen=signed`` widens the step range so the transition along k goes below 0 (design.md S2):
to −1 under Eq 92's form, to −α_t under Yang's (steps up to 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

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
    """Gated DeltaNet: M_t = α_t M_{t−1}(I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ (``gate_form="eq92"``:
    M_t = M_{t−1}(α_t I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ)."""

    # A stored config (checkpoint, run folder, Hugging Face folder) from before gate_form existed was
    # trained with Eq 92's form; it loads as that form, not as today's default (config.from_dict).
    LEGACY_VALUES: ClassVar[dict[str, Any]] = {"gate_form": "eq92"}

    memory_kind: str = "linear"
    objective: str = "dot"
    rule: str = "dgd"
    momentum: str = "none"
    eta_init: float = 0.5
    decay: bool = True
    gate_form: str = "yang"
