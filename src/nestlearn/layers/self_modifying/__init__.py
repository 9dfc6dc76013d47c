"""Self-modifying Titans: memories that generate their own keys, values, gates and targets (NL-L §8).

The token mixer of the Hope block (spec §5.3–5.7, NL-L Eqs 83–96; decisions D3–D12). Per head,
with x_t the block input after the pre-norm, every adaptive projection is itself an associative
memory, a 2-layer MLP M(z) = z + W₁σ(W₂z) (Eq 89; scalar heads d→h→1 without residual, D8):

    k_t = L2norm(φ(conv(M_k(x_t))))      v_t = φ(conv(M_v(x_t)))        q_t = L2norm(φ(conv(W_q x_t)))
    η_t = η_max·sigmoid(M_η(x_t) + b_η)  α_t = sigmoid(M_α(x_t) + b_α)                       (Eqs 83, 94)
    v̂_{□,t} = M_□(v_t)                   the memory's own target, constant in its inner gradient (Eqs 84, 95; D7)
    o_t = M_memory,t−1(q_t)                                                               (Eq 94; D5)

and every memory □ ∈ {k, v, (q), η, α, memory} learns min ½‖M_□(k_t) − v̂_{□,t}‖² (Eq 85) with DGD,
retention and momentum (Eq 88, D6, D9), on the weight W₂ that consumes k:

    S_t = β_t S_{t−1} + (1 − β_t) g_t,   W₂ ← W₂(α_t I − η_t k_t k_tᵀ) − η_t S⁽²⁾_t,   W₁ ← α_t W₁ − η_t S⁽¹⁾_t

(the default momentum form; design.md S1 gives the others, and the signed step range and per-weight
step of S2–S3 rescale η_t).

Chunking (Eq 90 with the causal index fix b(t) = C(⌈t/C⌉ − 1), spec §5.5, D4): all inner gradients
and every generation (k, v, q, η, α, v̂) read the boundary state of the generating memory, on the grid
``chunk_size_other`` for the k, v, q, η, α memories and ``chunk_size_memory`` for the main memory;
only the output read o_t sees intra-chunk states. Because generation reads boundary states, each
chunk of ``chunk_size_other`` tokens is generated in parallel, and every memory is written by the
chunk-parallel primitive :func:`nestlearn.memory.memory_scan` (closed-form gradients, spec §5.8–5.9)
with its self-generated targets built inside the primitive (``self_values``). The generating memories
only need their states (``outputs=False``), and the main memory, which nothing in generation reads,
runs after the generation loop as one scan over the whole call.
:func:`nestlearn.layers.self_modifying.naive.self_modifying_reference` is the token-by-token
oracle of spec §5.7, in its own file.

Memories with the same shape share one stacked tensor along the head axis ("groups"), so one scan
call updates them all: ``proj`` holds the adaptive vector projections in the order k, v, q (those
switched on), ``gate`` holds η then α, ``mem`` the main memory. Fast state (flat dict, batch axis
first, D2): ``{group}.{W1,W2}`` weights (B, G·H, d_out, d_in), ``{group}.{W1,W2}_b`` the boundary
copies, ``{group}.{W1,W2}_mom`` the momenta, and ``conv`` (B, 3, channels), the last inputs of the
causal convolution.

Output (D11): y = W_o(RMSNorm(o) ⊙ sigmoid(W_g x)), the norm per head.
"""

from nestlearn.layers.self_modifying.config import GROUPS, SelfModConfig
from nestlearn.layers.self_modifying.layer import (
    CONV_WIDTH,
    SelfModifyingTitans,
    State,
    merge_heads,
    repeat_groups,
    split_heads,
)

__all__ = ["CONV_WIDTH", "GROUPS", "SelfModConfig", "SelfModifyingTitans", "State", "merge_heads", "repeat_groups", "split_heads"]
