"""Continuum Memory System (CMS): a chain of MLP levels, level ℓ written once every C(ℓ) tokens.

NL-L §7.1, Eqs 70–74 (spec §6); decisions D13–D17. Level ℓ is the residual MLP

    F_ℓ(x) = x + W_down (SiLU(W_gate n(x)) ⊙ W_up n(x))       (``level_form="swiglu"``, the default; n: RMSNorm)
    F_ℓ(x) = x + W_out σ(W_in n(x))                          (``level_form="mlp"``)

(D15: the SwiGLU form is the Transformer++ MLP, and keeps a pre-trained one as the level's initial
state, spec §6.4).
The update signal (``signal``, D13) says what changes the level's weights (Eq 71):

* ``"kv"`` and ``"lss"``: the weights (W_in, W_out), resp. (W_gate, W_up, W_down), are a
  per-sample fast state (D2) starting from meta-learned initial values. Inside a chunk of C(ℓ)
  tokens the level reads with its chunk-start weights θ_b; at the chunk's end it writes

      θ ← θ − Σ_{t ∈ chunk} η_t g_t,    η_t = η_max · sigmoid(w_ηᵀ x_t + b_η) / (C(ℓ) · d),

  so a write only affects later chunks (causal by construction). ``kv`` (local key-value
  regression): g_t = ∇_θ ½‖F_θb(k_t) − v_t‖² with k_t = W_k x_t, v_t = W_v x_t. ``lss`` (local
  surprise signal, spec §1.3 Eq 9): g_t = ∇_θ ⟨F_θb(x_t), u_t⟩, where u_t = ∂L_c/∂y_t is the
  gradient of the model's next-token losses inside the chunk with respect to this level's output,
  detached. u comes from the model (:mod:`nestlearn.models.lss`), so this layer either takes it as
  an input (``forward(..., u=...)``) or, driven by the model, records its reads (``tape``) and
  writes when the model calls :func:`lss_write` at a chunk's end.
* ``"optimizer"``: the weights are ordinary slow parameters with no fast state; the level module
  is tagged with its period ``step_periods[ℓ]`` (:data:`nestlearn.optim.periodic.STEP_PERIOD_ATTR`)
  and the outer optimiser steps it only every that many optimiser steps with the summed gradients.

The 1/(C·d) factor of η [Interp; D13 leaves the values of η open] keeps the summed step of a chunk
scale-free: the C gradients of a chunk are taken at the same point and each grows with
‖n(·)‖² = d, so an unscaled η that works for one (C, d) diverges for another. A level that writes
is a memory of the primitive (:mod:`nestlearn.memory`, run by its ``memory_scan``): the
non-residual MLP memory (kind ``"mlp"`` or ``"swiglu"``) with plain GD, read at its chunk's
boundary state, applied to n(k) with objective L2 and value v − k (``kv``), or to n(x) with
objective ``dot`` and value −u (``lss``). Its closed-form inner gradients (spec §5.8) and its
chunk step are those of Titans and the self-modifying memories; only the chain of chunk-start
weights is sequential.
A level with η_max = 0 (or under ``optimizer``) holds no fast state and reads its initial weights
directly: it is the static MLP (spec §6.4: η → 0 reduces to the pre-trained model), computed with
the same unbatched products as an ordinary MLP layer.

Variants (``variant``): ``"sequential"`` (Eq 73, the chain of Eq 70), ``"nested"`` (Eq 72: level
s+1 is re-initialised at every chunk boundary of level s from an initial state that is itself a fast
state, written at level s's frequency with level s+1's own signal and rule [Interp, D15]) and
``"independent"`` (Eq 74: levels read the same input; a softmax-weighted sum aggregates them).
Levels are listed slowest first (D14); ``order="fast_first"`` reverses the application order only.

Chunks are aligned to absolute positions, and a partial chunk's writes are carried in the state
beside the chunk-start weights the level reads, so a stream processed in segments equals one pass. The token-by-token oracle is
:func:`nestlearn.layers.cms.naive.cms_reference`, in its own file. The ``optimizer`` signal has no nested
variant (a level without fast state has no initial state to re-initialise from).
"""


from nestlearn.layers.cms.config import (
    ACTIVATIONS,
    CMS_STEP_NORMS,
    LEVEL_ASSIGNMENTS,
    LEVEL_FORMS,
    ORDERS,
    SIGNALS,
    VARIANTS,
    CMSConfig,
    depth_group_chunk_sizes,
)
from nestlearn.layers.cms.layer import CMS, State
from nestlearn.layers.cms.level import CMSLevel
from nestlearn.layers.cms.lss import LSSRecord, lss_write

__all__ = [
    "ACTIVATIONS", "CMS", "CMS_STEP_NORMS", "CMSConfig", "CMSLevel", "LEVEL_ASSIGNMENTS", "LEVEL_FORMS",
    "LSSRecord", "ORDERS", "SIGNALS", "State", "VARIANTS", "depth_group_chunk_sizes", "lss_write",
]
