"""The ``model.selfmod.*`` switches of the self-modifying memory (D3–D12, design.md S1–S5)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from nestlearn.errors import ConfigError, check_choice, check_positive, check_range
from nestlearn.memory import MemorySpec
from nestlearn.memory.spec import EIGENS, RETAINS, STEP_NORMS

GROUPS = ("proj", "gate", "mem")


@dataclass
class SelfModConfig:
    """The ``selfmod.*`` switches (decisions D3–D12); defaults are the binding ones.

    Attributes:
        write_grad: ``"differentiable"`` or ``"stopgrad"`` outer gradients through the writes (D3).
        chunk_size_memory: chunk of the main memory C_mem (D4).
        chunk_size_other: chunk of the k, v, q, η, α memories C_oth, a multiple of C_mem (D4).
        read: ``"intra_chunk"`` o_t = M_{t−1}(q_t), or ``"boundary"`` o_t = M_b(q_t) (D5).
        objective: ``"l2"`` ½‖M(k) − v̂‖² or ``"dot"`` −⟨M(k), v̂⟩ (D6).
        inner_rule: ``"dgd"`` (Eq 88) or ``"gd"`` (ablation "w/o DGD": α_t I only) (D6).
        weight_decay: generate α_t; False is the ablation "w/o weight decay", α ≡ 1 (D6).
        eta_max: bound of η_t, in (0, 1] (D8).
        momentum: ``"data"`` β_t = sigmoid(w_βᵀx_t + b_β), ``"scalar"`` one β per head, ``"off"`` (D9).
        momentum_form: ``"ema"`` S ← βS + (1 − β)g or ``"scaled"`` S ← βS + g (D9 as first read;
            it amplifies the step by up to 1/(1 − β)); the step is η S in both (design.md S1).
        eigen: ``"positive"`` step η or ``"signed"`` step (1 + α)η, whose transition along k reaches
            negative eigenvalues (design.md S2).
        step_norm: ``"none"``, ``"implicit"`` (η/(1 + η‖p‖²)) or ``"bounded"`` (η/max(1, ‖p‖²)), per
            weight with that weight's own input p (design.md S3).
        retain: ``"initial"`` (decay toward the meta-learned initial state; the default) or ``"zero"``
            (Eq 88's decay toward the zero map) (design.md S4).
        write_bound: bound τ on the norm of each token's gradient per weight, 0 for none (design.md S5).
        adaptive_q: q from a self-modifying memory (the default, D10); False is the static W_q of the text
            under Eq 85 and Table 6's ablation "w/o inner-projection q".
        adaptive_k, adaptive_v: k, v from self-modifying memories; False replaces them by static linear
            projections (ablations "w/o inner-projection k / v", Table 6).
        conv: ``"qkv"`` (depthwise conv on q, k, v), ``"input"`` (one conv on the input of all
            memories) or ``"none"`` (D11).
        conv_pointwise: a 1×1 convolution after each depthwise one (D11).
        qkv_activation: ``"silu"`` or ``"none"`` after the convolution (D11).
        output_gate: ``"sigmoid"`` or ``"none"`` (D11).
        heads: H independent memory sets over d/H channels each (D11).
        memory_hidden: hidden width of every memory over all heads (None: d; D12).
        activation: σ of the memories, ``"silu"`` or ``"gelu"`` (D12).
        memory_out_init: std of the initial W₁ of every memory (D12).
        eta_init, alpha_init, beta_init: initial η/η_max, α and β, set through the biases (D8, D9).
        v_norm: ``"l2"`` (v L2-normalised like k; the default) or ``"none"`` (spec §5.7 literally:
            v is not normalised; the self-generated targets then grow with the memory that makes
            them and overflow within a few hundred tokens: design.md S9).
    """

    # Eq 57's η/(1 + η‖k‖²) on every step was ``dgd_normalize``; step_norm="implicit" gives each weight
    # that normalisation by its own input (design.md S3), so the switch was removed.
    REMOVED_FIELDS: ClassVar[dict[str, tuple[Any, str]]] = {
        "dgd_normalize": (False, "use model.selfmod.step_norm: implicit (Eq 57 per weight, design.md S3)")}
    # What a stored config without these fields computed: they were added with other defaults later.
    LEGACY_VALUES: ClassVar[dict[str, Any]] = {"retain": "zero", "adaptive_q": False}

    write_grad: str = "differentiable"
    chunk_size_memory: int = 16
    chunk_size_other: int = 64
    read: str = "intra_chunk"
    objective: str = "l2"
    inner_rule: str = "dgd"
    weight_decay: bool = True
    eta_max: float = 1.0
    momentum: str = "data"
    momentum_form: str = "ema"
    eigen: str = "signed"
    step_norm: str = "bounded"
    retain: str = "initial"
    write_bound: float = 1.0
    adaptive_q: bool = True
    adaptive_k: bool = True
    adaptive_v: bool = True
    conv: str = "qkv"
    conv_pointwise: bool = False
    qkv_activation: str = "silu"
    output_gate: str = "sigmoid"
    heads: int = 1
    memory_hidden: int | None = None
    activation: str = "silu"
    memory_out_init: float = 1e-3
    eta_init: float = 0.1
    alpha_init: float = 0.99
    beta_init: float = 0.5
    v_norm: str = "l2"

    def validate(self, prefix: str = "model.selfmod") -> None:
        check_choice(f"{prefix}.write_grad", self.write_grad, ("differentiable", "stopgrad"))
        check_positive(f"{prefix}.chunk_size_memory", self.chunk_size_memory)
        check_positive(f"{prefix}.chunk_size_other", self.chunk_size_other)
        if self.chunk_size_other % self.chunk_size_memory:
            raise ConfigError(f"{prefix}.chunk_size_other",
                              f"must be a multiple of {prefix}.chunk_size_memory={self.chunk_size_memory}, "
                              f"got {self.chunk_size_other}")
        check_choice(f"{prefix}.read", self.read, ("intra_chunk", "boundary"))
        check_choice(f"{prefix}.objective", self.objective, ("l2", "dot"))
        check_choice(f"{prefix}.inner_rule", self.inner_rule, ("dgd", "gd"))
        check_range(f"{prefix}.eta_max", self.eta_max, 0.0, 1.0, low_open=True)
        check_choice(f"{prefix}.momentum", self.momentum, ("data", "scalar", "off"))
        check_choice(f"{prefix}.momentum_form", self.momentum_form, ("ema", "scaled"))
        check_choice(f"{prefix}.eigen", self.eigen, EIGENS)
        check_choice(f"{prefix}.step_norm", self.step_norm, STEP_NORMS)
        check_choice(f"{prefix}.retain", self.retain, RETAINS)
        check_positive(f"{prefix}.write_bound", self.write_bound, allow_zero=True)
        check_choice(f"{prefix}.conv", self.conv, ("qkv", "input", "none"))
        check_choice(f"{prefix}.qkv_activation", self.qkv_activation, ("silu", "none"))
        check_choice(f"{prefix}.output_gate", self.output_gate, ("sigmoid", "none"))
        check_positive(f"{prefix}.heads", self.heads)
        if self.memory_hidden is not None:
            check_positive(f"{prefix}.memory_hidden", self.memory_hidden)
        check_choice(f"{prefix}.activation", self.activation, ("silu", "gelu"))
        check_positive(f"{prefix}.memory_out_init", self.memory_out_init, allow_zero=True)
        for name in ("eta_init", "alpha_init", "beta_init"):
            check_range(f"{prefix}.{name}", getattr(self, name), 0.0, 1.0, low_open=True, high_open=True)
        check_choice(f"{prefix}.v_norm", self.v_norm, ("none", "l2"))

    def check_width(self, d_model: int, prefix: str = "model.selfmod") -> None:
        """Raise unless the heads split d (and the hidden width) evenly."""
        if d_model % self.heads:
            raise ConfigError(f"{prefix}.heads", f"must divide d_model={d_model}, got {self.heads}")
        hidden = self.memory_hidden or d_model
        if hidden % self.heads:
            raise ConfigError(f"{prefix}.memory_hidden", f"must be a multiple of {prefix}.heads={self.heads}, got {hidden}")

    def memory_spec(self, group: str) -> MemorySpec:
        """The primitive's spec of a memory group: its chunk grid, residual form and update rule."""
        spec = MemorySpec(kind="mlp", objective=self.objective, rule=self.inner_rule,
                          momentum="none" if self.momentum == "off" else self.momentum_form,
                          chunk_size=self.chunk_size_memory,
                          read="before" if self.read == "intra_chunk" else "boundary", activation=self.activation,
                          residual=True, write_grad=self.write_grad, eigen=self.eigen, step_norm=self.step_norm,
                          retain=self.retain, write_bound=self.write_bound, field="model.selfmod")
        if group == "mem":
            return spec
        return replace(spec, chunk_size=self.chunk_size_other, residual=group == "proj")
