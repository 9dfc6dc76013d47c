"""Linear attention, DeltaNet and Gated DeltaNet as configurations of the one memory primitive.

All three are a linear memory M_t ∈ ℝ^{d_v×d_k} per head with the dot-product objective
ℓ = −⟨M k, v⟩ [NL-L Eqs 14–18, 64–65], so their inner gradient −v kᵀ does not depend on the state and
the chunk size changes only speed:

* linear attention: GD with η ≡ 1, no decay — M_t = M_{t−1} + v_t k_tᵀ, y_t = M_t q_t [NL-L Eqs 15–16];
* DeltaNet: DGD — M_t = M_{t−1}(I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ, the delta rule [NL-L Eq 65];
* Gated DeltaNet: DGD with retention — M_t = M_{t−1}(α_t I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ
  ([NL-L Eq 92] sign-corrected, [T App. C Eq 33] with η = 0).

The layers are :class:`~nestlearn.layers.titans.MemoryLayer` with these specs.
"""

from __future__ import annotations

from nestlearn.layers.titans import MemoryLayer
from nestlearn.memory import MemorySpec


def linear_attention_layer(d_model: int, n_heads: int, chunk_size: int = 64, **kwargs) -> MemoryLayer:
    """Unnormalised linear attention (η ≡ 1, no gates, no convolution unless asked)."""
    spec = MemorySpec(kind="linear", objective="dot", rule="gd", chunk_size=chunk_size)
    kwargs = {"conv_size": 0, "eta_mode": "one", "decay": False, **kwargs}
    return MemoryLayer(d_model, n_heads, spec, **kwargs)


def deltanet_layer(d_model: int, n_heads: int, chunk_size: int = 64, **kwargs) -> MemoryLayer:
    """DeltaNet: the delta rule with a learned per-token η_t ∈ (0, 1) and L2-normalised keys."""
    spec = MemorySpec(kind="linear", objective="dot", rule="dgd", chunk_size=chunk_size)
    return MemoryLayer(d_model, n_heads, spec, **{"decay": False, **kwargs})


def gated_deltanet_layer(d_model: int, n_heads: int, chunk_size: int = 64, **kwargs) -> MemoryLayer:
    """Gated DeltaNet: the delta rule with a learned retention gate α_t."""
    spec = MemorySpec(kind="linear", objective="dot", rule="dgd", chunk_size=chunk_size)
    return MemoryLayer(d_model, n_heads, spec, **{"decay": True, **kwargs})
