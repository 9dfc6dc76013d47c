"""Titans (LMM) [T §4.3 "LMM"]: a stack of neural-memory blocks, and the shared memory-family config.

Block: x + MemoryLayer(RMSNorm(x)), then + SwiGLU(RMSNorm(·)); residuals in all blocks [T §4.4].
The memory defaults follow Titans: a 2-layer residual MLP per head (Eq 89 form, D12), L2 objective
[T Eq 12], GD with momentum and weight decay [T Eqs 13–14], gradients at chunk boundaries [T Eqs 16–18],
reads after the write y_t = M_t(q_t) [T Eq 15].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nestlearn.errors import ConfigError, check_choice, check_positive, check_range
from nestlearn.layers.mlp import SwiGLU, swiglu_hidden
from nestlearn.layers.norm import RMSNorm
from nestlearn.layers.titans import MemoryLayer
from nestlearn.memory import MemorySpec
from nestlearn.memory.spec import ACTIVATIONS, KINDS, MOMENTA, OBJECTIVES, READS, RULES, WRITE_GRADS
from nestlearn.models.lm import LMConfig, register_family

State = dict[str, torch.Tensor]


@dataclass
class MemoryLMConfig(LMConfig):
    """Fields shared by every family built on :class:`~nestlearn.layers.titans.MemoryLayer`.

    Attributes:
        n_heads: memory heads H (each with its own memory of width d/H).
        ffn_hidden: SwiGLU inner width (None: 8/3·d rounded to 32).
        memory_kind, objective, rule, momentum, chunk_size, read, memory_activation: the
            :class:`~nestlearn.memory.MemorySpec` fields.
        memory_hidden: hidden width of the MLP memory per head (None: d/H).
        conv_size: causal depthwise convolution width on q, k, v (0: none).
        qkv_activation: ``"silu"`` or ``"none"`` after the convolution.
        eta_mode: ``"learned"`` or ``"one"``.
        eta_max, eta_init, alpha_init, beta_init: gate range and initial values.
        decay: use the retention gate α_t.
        output_gate: sigmoid output gate before the output projection.
        memory_out_init: std of the MLP memory's initial W₁.
        write_grad: ``"differentiable"`` or ``"stopgrad"`` outer gradients through the memory writes (D3).
        eigen, step_norm, retain, write_bound: the primitive's range and stability switches
            (:class:`~nestlearn.memory.MemorySpec`; design.md S2–S5).
        gate_form: where α_t meets a DGD transition: ``"eq92"`` W(α_t I − η_t k_t k_tᵀ) or ``"yang"``
            α_t W(I − η_t k_t k_tᵀ) (design.md S12); ``"yang"`` needs ``rule="dgd"``.
    """

    bounded_context = False

    n_heads: int = 4
    ffn_hidden: int | None = None
    memory_kind: str = "mlp"
    objective: str = "l2"
    rule: str = "gd"
    momentum: str = "titans"
    chunk_size: int = 64
    read: str = "after"
    memory_activation: str = "silu"
    memory_hidden: int | None = None
    conv_size: int = 4
    qkv_activation: str = "silu"
    eta_mode: str = "learned"
    eta_max: float = 1.0
    eta_init: float = 0.1
    alpha_init: float = 0.99
    beta_init: float = 0.5
    decay: bool = True
    output_gate: bool = True
    memory_out_init: float = 1e-3
    write_grad: str = "differentiable"
    eigen: str = "positive"
    step_norm: str = "none"
    retain: str = "zero"
    write_bound: float = 0.0
    gate_form: str = "eq92"

    def validate(self) -> None:
        super().validate()
        check_positive("model.n_heads", self.n_heads)
        if self.d_model % self.n_heads:
            raise ConfigError("model.n_heads", f"must divide model.d_model={self.d_model}, got {self.n_heads}")
        if self.ffn_hidden is not None:
            check_positive("model.ffn_hidden", self.ffn_hidden)
        check_choice("model.memory_kind", self.memory_kind, KINDS)
        check_choice("model.objective", self.objective, OBJECTIVES)
        check_choice("model.rule", self.rule, RULES)
        check_choice("model.momentum", self.momentum, MOMENTA)
        check_positive("model.chunk_size", self.chunk_size)
        check_choice("model.read", self.read, READS)
        check_choice("model.memory_activation", self.memory_activation, ACTIVATIONS)
        if self.memory_hidden is not None:
            check_positive("model.memory_hidden", self.memory_hidden)
        check_positive("model.conv_size", self.conv_size, allow_zero=True)
        check_choice("model.qkv_activation", self.qkv_activation, ("silu", "none"))
        check_choice("model.eta_mode", self.eta_mode, ("learned", "one"))
        check_range("model.eta_max", self.eta_max, 0.0, 1.0, low_open=True)
        check_range("model.eta_init", self.eta_init, 0.0, self.eta_max, low_open=True, high_open=True)
        check_range("model.alpha_init", self.alpha_init, 0.0, 1.0, low_open=True, high_open=True)
        check_range("model.beta_init", self.beta_init, 0.0, 1.0, low_open=True, high_open=True)
        check_positive("model.memory_out_init", self.memory_out_init, allow_zero=True)
        check_choice("model.write_grad", self.write_grad, WRITE_GRADS)
        self.memory_spec()  # the range and stability switches

    def memory_spec(self) -> MemorySpec:
        return MemorySpec(kind=self.memory_kind, objective=self.objective, rule=self.rule, momentum=self.momentum,
                          chunk_size=self.chunk_size, read=self.read, activation=self.memory_activation,
                          write_grad=self.write_grad, eigen=self.eigen, step_norm=self.step_norm, retain=self.retain,
                          write_bound=self.write_bound, gate_form=self.gate_form, field="model")

    def memory_layer(self) -> MemoryLayer:
        return MemoryLayer(self.d_model, self.n_heads, self.memory_spec(), memory_hidden=self.memory_hidden,
                           conv_size=self.conv_size, qkv_activation=self.qkv_activation, eta_mode=self.eta_mode,
                           eta_max=self.eta_max, decay=self.decay, output_gate=self.output_gate,
                           eta_init=self.eta_init, alpha_init=self.alpha_init, beta_init=self.beta_init,
                           memory_out_init=self.memory_out_init, norm_eps=self.norm_eps)

    def ffn(self) -> SwiGLU:
        return SwiGLU(self.d_model, self.ffn_hidden or swiglu_hidden(self.d_model))

    def build_block(self, layer_idx: int) -> nn.Module:
        return MemoryBlock(self)


@register_family("titans")
@dataclass
class TitansConfig(MemoryLMConfig):
    """Titans (LMM): the neural long-term memory alone as the sequence model [T §4.3].

    Its momentum is the exponential average and each token's write is bounded (design.md S1, S5):
    Titans' own momentum form diverges within 64 tokens with its gates near the top of their range.
    """

    momentum: str = "ema"
    write_bound: float = 1.0


class MemoryBlock(nn.Module):
    """x + Memory(RMSNorm(x)), then + SwiGLU(RMSNorm(·)). State: the memory layer's state."""

    def __init__(self, cfg: MemoryLMConfig):
        super().__init__()
        self.mem_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mem = cfg.memory_layer()
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = cfg.ffn()

    def init_state(self, batch_size: int, device: torch.device | str, dtype: torch.dtype) -> State:
        return self.mem.init_state(batch_size, device, dtype)

    def forward(self, x: torch.Tensor, state: State | None = None, pos: int = 0,
                keep_state: bool = True) -> tuple[torch.Tensor, State]:
        """x: (B, T, d) -> (same shape, new state; {} without ``keep_state``)."""
        h, state = self.mem(self.mem_norm(x), state, pos, keep_state)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), state
