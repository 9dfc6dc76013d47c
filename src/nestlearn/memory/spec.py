"""The description of one associative memory: parameterisation, objective, inner optimiser, chunking.

An associative memory [NL-L §3.1, Def. 1, Eq 6] is an operator M(·) learned online by an inner
optimiser on a key–value objective. Every memory in nestlearn (the Titans neural memory, linear
attention, DeltaNet, Gated DeltaNet, and later Hope's self-modifying memories and CMS) is one
:class:`MemorySpec` plus per-token gates, run by :func:`nestlearn.memory.memory_scan` (chunk-parallel)
or :func:`nestlearn.memory.memory_scan_reference` (token by token).

Conventions (one sample, one head; the implementation carries a batch and a head axis, D2):

* Parameterisation (``kind``):
  - ``"linear"``: M(z) = W z, W ∈ ℝ^{d_out×d_in}  [NL-L Eqs 14–16].
  - ``"mlp"``: M(z) = z + W₁ σ(W₂ z) (``residual=True``, Eq 89 / [T §3.1]) or W₁ σ(W₂ z),
    W₂ ∈ ℝ^{h×d_in}, W₁ ∈ ℝ^{d_out×h}.
  - ``"swiglu"``: the same with the gated hidden layer h(p) = SiLU(p_g) ⊙ p_u of p = W₂ z, where
    W₂ = [W_gate; W_up] ∈ ℝ^{2h×d_in} stacks the two input matrices (a CMS level's SwiGLU form,
    spec §6.4); everything below treats the stack as the one key-consuming weight.
* Objective (``objective``), evaluated at the chunk's boundary state M_b (spec §5.5, [T Eqs 16–18]):
  - ``"l2"``: ℓ = ½‖M(k) − v‖² [T Eq 12, NL-L Eq 93]; error e = M_b(k) − v.
  - ``"dot"``: ℓ = −⟨M(k), v⟩ [NL-L Eq 17, Eq 92 sign-corrected]; error e = −v.
* Inner rule (``rule``) on the weight that consumes k (W for linear, W₂ for the MLP; D6):
  - ``"gd"``: W ← α_t W − (step)  [T Eq 13].
  - ``"dgd"``: W ← W(α_t I − η_t k_t k_tᵀ) − (step)  [NL-L Eq 88]; other weights decay by α_t only.
* Where the retention meets the delta rule (``gate_form``, design.md S12; DGD only):
  ``"eq92"`` W(α_t I − η_t k_t k_tᵀ), α_t on the identity alone [NL-L Eqs 88, 92]; ``"yang"``
  α_t W(I − η_t k_t k_tᵀ), α_t on the whole transition (Gated DeltaNet as Yang et al. 2024 publish it).
  Eq 92's form is Yang's minus (1 − α_t) η_t W k_t k_tᵀ; they agree without decay.
* Momentum (``momentum``), with g_t the inner gradient at the boundary state:
  - ``"none"``: step = η_t g_t  [T Eq 8 with decay, Eq 13].
  - ``"titans"``: S_t = β_t S_{t−1} + η_t g_t, step = S_t. Titans' surprise [T Eqs 9–10, 13–14] is −S_t
    (the state stores accumulated gradients, so both momentum forms share one sign).
  - ``"scaled"``: S_t = β_t S_{t−1} + g_t, step = η_t S_t  (D9, spec §5.7).
  - ``"ema"``: S_t = β_t S_{t−1} + (1 − β_t) g_t, step = η_t S_t: the momentum's gain on a constant
    gradient is 1, so it cannot amplify the step (``"scaled"`` amplifies it by 1/(1 − β)); design.md, S1.
* Step range (``eigen``, design.md S2): the effective step is η_t (``"positive"``) or (1 + α_t) η_t
  (``"signed"``; α ≡ 1 without decay). Along a unit key the DGD transition α_t − η_t‖k‖² then spans
  [−1, α_t) instead of [0, α_t): negative eigenvalues, which state tracking needs. With
  ``gate_form="yang"`` the signed step is 2η_t, so α_t(1 − 2η_t‖k‖²) spans (−α_t, α_t) (S12).
* Step normalisation (``step_norm``, design.md S3), per weight X with input p_X (k for the weight that
  consumes k, σ(W₂k) for W₁), applied to the effective step in both of its terms (DGD and gradient):
  ``"none"``; ``"implicit"`` η/(1 + η‖p_X‖²) (Eq 57 extended to every weight); ``"bounded"``
  η/max(1, ‖p_X‖²): unchanged for inputs of norm ≤ 1, bounded by the input's curvature above.
* Retention target (``retain``, design.md S4): ``"zero"`` W ← α_t W …, the paper's decay toward 0;
  ``"initial"`` W ← α_t W + (1 − α_t) W₀ …, decay toward the meta-learned initial state W₀ (the
  ``anchor`` argument of the scan).
* Curvature of the key-consuming weight of an MLP (``curvature``, design.md S3): ``"input"`` ‖k‖²,
  its input's alone, as above; ``"gain"`` ‖k‖²·‖∂(W₁ h(p))/∂p‖²_F, its input's times the squared
  gain of the layer behind it (a CMS level's ``bounded`` step, whose W₁ can be far from unit gain).
* Write bound (``write_bound`` τ > 0, design.md S5): each token's gradient g_t = e_t p_tᵀ is scaled by
  min(1, τ/‖g_t‖_F) before it enters the step or the momentum; 0 turns it off.
* Read (``read``): ``"after"`` returns y_t = M_t(q_t), the state after token t's write
  [T Eq 15, NL-L Eq 16]; ``"before"`` returns M_{t−1}(q_t), read-before-write [NL-L Eq 94, D5];
  ``"boundary"`` returns M_b(q_t), the state at the chunk's boundary b(t), so no write of a chunk is
  seen before the chunk ends (D5's boundary read; a CMS level reads this way, Eq 71).
* Outer gradients through the writes (``write_grad``, D3): ``"differentiable"`` lets the outer loss
  differentiate the whole recurrence; ``"stopgrad"`` makes every fast state θ₀ + sg(Δ_t), with θ₀ the
  state at the start of the call and Δ_t the accumulated writes — same forward values, but keys,
  values and gates receive no outer gradient through the memory.
* Chunking (``chunk_size`` C): all inner gradients of the tokens of a chunk are taken at the state
  before the chunk, b(t) = C·(⌈t/C⌉ − 1) in absolute positions (spec §5.5, D4); C = 1 is the fully
  sequential rule. With ``objective="dot"`` the gradient does not depend on the state, so C changes
  nothing but speed.
"""

from __future__ import annotations

from dataclasses import dataclass

from nestlearn.errors import ConfigError, check_choice, check_positive

KINDS = ("linear", "mlp", "swiglu")
OBJECTIVES = ("l2", "dot")
RULES = ("gd", "dgd")
MOMENTA = ("none", "titans", "scaled", "ema")
EIGENS = ("positive", "signed")
STEP_NORMS = ("none", "implicit", "bounded")
RETAINS = ("zero", "initial")
READS = ("after", "before", "boundary")
ACTIVATIONS = ("silu", "gelu")
WRITE_GRADS = ("differentiable", "stopgrad")
GATE_FORMS = ("eq92", "yang")
CURVATURES = ("input", "gain")


@dataclass(frozen=True)
class MemorySpec:
    """One associative memory's definition (see the module docstring for the equations).

    Attributes:
        kind: ``"linear"``, ``"mlp"`` or ``"swiglu"``.
        objective: ``"l2"`` or ``"dot"``.
        rule: ``"gd"`` or ``"dgd"``.
        momentum: ``"none"``, ``"titans"``, ``"scaled"`` or ``"ema"``.
        chunk_size: tokens per chunk C ≥ 1; gradients are taken at the chunk's boundary state.
        read: ``"after"`` (M_t(q_t)), ``"before"`` (M_{t−1}(q_t)) or ``"boundary"`` (M_b(q_t)).
        activation: σ of the MLP memory, ``"silu"`` or ``"gelu"`` (D12); ``"silu"`` for ``"swiglu"``.
        residual: the MLP memory adds its input (needs d_in = d_out).
        write_grad: ``"differentiable"`` or ``"stopgrad"`` (D3).
        eigen: ``"positive"`` (step η) or ``"signed"`` (step (1 + α)η).
        step_norm: ``"none"``, ``"implicit"`` or ``"bounded"``.
        retain: ``"zero"`` or ``"initial"`` (decay toward the anchor W₀).
        curvature: ``"input"`` or ``"gain"``, what the step normalisation of an MLP's W₂ divides by.
        write_bound: τ ≥ 0, bound on ‖g_t‖_F per weight and token (0: none).
        gate_form: ``"eq92"`` (α on the identity of the DGD transition) or ``"yang"`` (α on all of
            it); ``"yang"`` needs ``rule="dgd"``.
        field: dotted config prefix used in error messages.
    """

    kind: str = "mlp"
    objective: str = "l2"
    rule: str = "gd"
    momentum: str = "none"
    chunk_size: int = 64
    read: str = "after"
    activation: str = "silu"
    residual: bool = True
    write_grad: str = "differentiable"
    eigen: str = "positive"
    step_norm: str = "none"
    retain: str = "zero"
    write_bound: float = 0.0
    gate_form: str = "eq92"
    curvature: str = "input"
    field: str = "memory"

    def __post_init__(self) -> None:
        check_choice(f"{self.field}.kind", self.kind, KINDS)
        check_choice(f"{self.field}.objective", self.objective, OBJECTIVES)
        check_choice(f"{self.field}.rule", self.rule, RULES)
        check_choice(f"{self.field}.momentum", self.momentum, MOMENTA)
        check_positive(f"{self.field}.chunk_size", self.chunk_size)
        check_choice(f"{self.field}.read", self.read, READS)
        check_choice(f"{self.field}.activation", self.activation, ACTIVATIONS)
        check_choice(f"{self.field}.write_grad", self.write_grad, WRITE_GRADS)
        check_choice(f"{self.field}.eigen", self.eigen, EIGENS)
        check_choice(f"{self.field}.step_norm", self.step_norm, STEP_NORMS)
        check_choice(f"{self.field}.retain", self.retain, RETAINS)
        check_positive(f"{self.field}.write_bound", self.write_bound, allow_zero=True)
        check_choice(f"{self.field}.gate_form", self.gate_form, GATE_FORMS)
        check_choice(f"{self.field}.curvature", self.curvature, CURVATURES)
        if self.kind == "swiglu" and self.activation != "silu":
            raise ConfigError(f"{self.field}.activation", f"the swiglu kind gates with SiLU, got {self.activation!r}")
        if self.gate_form == "yang" and self.rule != "dgd":
            # Without the DGD term there is no transition for α to multiply beyond the identity.
            raise ConfigError(f"{self.field}.gate_form", f"'yang' needs {self.field}.rule='dgd'; with "
                              f"rule={self.rule!r} the only allowed value is 'eq92'")

    @property
    def weight_names(self) -> tuple[str, ...]:
        """Names of the fast weight matrices: ``("W",)`` or ``("W1", "W2")``."""
        return ("W",) if self.kind == "linear" else ("W1", "W2")

    @property
    def state_names(self) -> tuple[str, ...]:
        """Keys of a memory state: each weight, its boundary copy ``_b`` and, with momentum, ``_mom``."""
        names = [*self.weight_names, *(f"{n}_b" for n in self.weight_names)]
        if self.momentum != "none":
            names += [f"{n}_mom" for n in self.weight_names]
        return tuple(names)
