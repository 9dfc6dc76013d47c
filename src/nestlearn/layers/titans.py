"""Multi-head associative-memory token mixer: the Titans neural memory [T §3, §4.4] and its linear cases.

One layer = projections → causal depthwise convolution (width 4) → SiLU → L2-normalised q, k →
per-head memory (:mod:`nestlearn.memory`) written with data-dependent gates η_t, α_t, β_t →
RMSNorm and sigmoid output gate → output projection ("normalization and gating with a linear layer
before the final output projection", [T §4.4]; D11). The memory's initial weights M_0 are slow
parameters, meta-learned through the differentiable writes (NL-L §8.1, D3, D12).

Gates (one scalar per token and head, from the layer input x_t):
    η_t = η_max · sigmoid(w_ηᵀ x_t + b_η)   inner step (Titans' θ_t [T Eq 10])
    α_t = sigmoid(w_αᵀ x_t + b_α)           retention (Titans' 1 − α_t [T Eq 13])
    β_t = sigmoid(w_βᵀ x_t + b_β)           momentum decay (Titans' η_t [T Eq 14])

State (flat dict, leading batch axis): ``conv`` (B, width − 1, 3·d), the last pre-convolution inputs;
``mem.<name>`` the memory state of :func:`nestlearn.memory.memory_scan` (weights (B, H, d_out, d_in)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nestlearn.errors import ConfigError
from nestlearn.layers.norm import RMSNorm
from nestlearn.memory import MemorySpec, init_memory_state, logit
from nestlearn.memory.step import memory_forward

State = dict[str, torch.Tensor]


class _ShiftConv(torch.autograd.Function):
    """y_t = Σ_j w_j ⊙ u_{t+j} over a left-padded input u (batch, seq + width − 1, channels) with taps
    w (width, channels); forward and backward as in-place shifted
    multiply-adds. On CPU this is several times faster than a grouped ``conv1d`` (whose depthwise
    backward is slow) and than autograd through slices (each slice's backward fills a full-size zero
    tensor)."""

    @staticmethod
    def forward(ctx, full: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        width = weight.shape[0]
        t = full.shape[1] - width + 1
        out = full[:, :t] * weight[0]
        for j in range(1, width):
            out.addcmul_(full[:, j:j + t], weight[j])
        ctx.save_for_backward(full, weight)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        full, weight = ctx.saved_tensors
        width, t = weight.shape[0], grad.shape[1]
        grad_full = torch.zeros_like(full)
        grad_weight = torch.empty_like(weight)
        # One reused buffer: a fresh full-size temporary per tap costs more than the arithmetic.
        product = torch.empty_like(grad)
        for j in range(width):
            grad_full[:, j:j + t].addcmul_(grad, weight[j])
            torch.mul(full[:, j:j + t], grad, out=product)
            torch.sum(product, dim=(0, 1), out=grad_weight[j])
        return grad_full, grad_weight


def causal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, cache: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise 1-D convolution over time with a carried input cache.

    Args:
        x: (batch, seq, channels).
        weight: (channels, 1, width).
        cache: (batch, width − 1, channels), the inputs before x (None: zeros, a sequence start).

    Returns:
        (batch, seq, channels) outputs, and the new cache.
    """
    width = weight.shape[-1]
    if cache is None:
        cache = x.new_zeros(x.shape[0], width - 1, x.shape[2])
    full = torch.cat((cache, x), dim=1)
    return _ShiftConv.apply(full, weight[:, 0].T), full[:, full.shape[1] - (width - 1):]


class MemoryLayer(nn.Module):
    """The Titans neural-memory layer [T §4.4], generic over the memory's :class:`MemorySpec`.

    Args:
        d_model: width d; split into ``n_heads`` heads of d/H, each with its own memory (D11).
        n_heads: H.
        spec: the memory (parameterisation, objective, rule, momentum, chunk size, read).
        memory_hidden: hidden width of an MLP memory per head (None: d/H, D12).
        conv_size: width of the causal depthwise convolution on q, k, v (0: none; [T §4.4] uses 4).
        qkv_activation: ``"silu"`` [T §4.4] or ``"none"``, applied after the convolution.
        qk_norm: L2-normalise q and k per head [T §4.4].
        eta_mode: ``"learned"`` (the η_t gate) or ``"one"`` (η ≡ 1: unnormalised linear attention, Eq 18).
        eta_max: upper bound of η_t (D8).
        decay: use the retention gate α_t (False: α ≡ 1).
        output_gate: multiply the normalised output by sigmoid(W_g x).
        eta_init, alpha_init, beta_init: gate values at initialisation (set through the biases).
        memory_out_init: std of the MLP memory's initial W₁ (D12); the linear memory starts at 0.
        norm_eps: RMSNorm epsilon.
    """

    def __init__(self, d_model: int, n_heads: int, spec: MemorySpec, *, memory_hidden: int | None = None,
                 conv_size: int = 4, qkv_activation: str = "silu", qk_norm: bool = True, eta_mode: str = "learned",
                 eta_max: float = 1.0, decay: bool = True, output_gate: bool = True, eta_init: float = 0.5,
                 alpha_init: float = 0.99, beta_init: float = 0.5, memory_out_init: float = 1e-3,
                 norm_eps: float = 1e-6):
        super().__init__()
        if d_model % n_heads:
            raise ConfigError("model.n_heads", f"must divide model.d_model={d_model}, got {n_heads}")
        self.spec = spec
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.hidden = memory_hidden or self.head_dim
        self.qkv_activation, self.qk_norm = qkv_activation, qk_norm
        self.eta_mode, self.eta_max, self.decay = eta_mode, eta_max, decay
        self.inits = {"eta": eta_init / eta_max, "alpha": alpha_init, "beta": beta_init}
        self.memory_out_init = memory_out_init
        self.gate_names = [n for n, on in (("eta", eta_mode == "learned"), ("alpha", decay),
                                           ("beta", spec.momentum != "none")) if on]
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.conv = nn.Conv1d(3 * d_model, 3 * d_model, conv_size, groups=3 * d_model, bias=False) if conv_size else None
        self.gates = nn.Linear(d_model, len(self.gate_names) * n_heads) if self.gate_names else None
        self.out_norm = RMSNorm(self.head_dim, norm_eps)
        self.gate = nn.Linear(d_model, d_model, bias=False) if output_gate else None
        self.out = nn.Linear(d_model, d_model, bias=False)
        if spec.kind == "linear":
            shapes = {"W": (n_heads, self.head_dim, self.head_dim)}
        else:
            shapes = {"W1": (n_heads, self.head_dim, self.hidden), "W2": (n_heads, self.hidden, self.head_dim)}
        self.initial = nn.ParameterDict({n: nn.Parameter(torch.zeros(s)) for n, s in shapes.items()})
        self.reset_special_parameters()

    def reset_special_parameters(self) -> None:
        """Gate biases at their initial values; M_0 near the identity (MLP) or zero (linear), D12."""
        if self.gates is not None:
            bias = torch.tensor([logit(self.inits[n]) for n in self.gate_names]).repeat_interleave(self.n_heads)
            with torch.no_grad():
                self.gates.bias.copy_(bias)
        if self.spec.kind == "linear":
            nn.init.zeros_(self.initial["W"])
        else:
            nn.init.normal_(self.initial["W2"], std=1 / math.sqrt(self.head_dim))
            nn.init.normal_(self.initial["W1"], std=self.memory_out_init)

    def initial_memory(self, batch_size: int) -> State:
        """The memory state at a sequence start: M_0 broadcast over the batch (D2), zero momenta."""
        return init_memory_state(self.spec, dict(self.initial), batch_size)

    def init_state(self, batch_size: int, device: torch.device | str, dtype: torch.dtype) -> State:
        """A fresh state with materialised tensors (so it can be saved), differentiable w.r.t. M_0."""
        state = {f"mem.{n}": t.to(device=device, dtype=dtype).contiguous() for n, t in self.initial_memory(batch_size).items()}
        if self.conv is not None:
            state["conv"] = torch.zeros(batch_size, self.conv.kernel_size[0] - 1, self.conv.in_channels,
                                        device=device, dtype=dtype)
        return state

    def features(self, x: torch.Tensor, cache: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x: (B, T, d) -> q, k, v each (B, H, T, d/H), and the new convolution cache."""
        b, t, _ = x.shape
        proj = self.qkv(x)
        if self.conv is not None:
            proj, cache = causal_depthwise_conv(proj, self.conv.weight, cache)
        if self.qkv_activation == "silu":
            proj = F.silu(proj)
        q, k, v = proj.view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.qk_norm:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        return q, k, v, cache

    def gate_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """x: (B, T, d) -> η, α, β each (B, H, T) (α, β None when unused)."""
        b, t, _ = x.shape
        values = {}
        if self.gates is not None:
            g = torch.sigmoid(self.gates(x)).view(b, t, len(self.gate_names), self.n_heads).permute(2, 0, 3, 1)
            values = dict(zip(self.gate_names, g))
        eta = self.eta_max * values["eta"] if "eta" in values else x.new_ones(b, self.n_heads, t)
        return eta, values.get("alpha"), values.get("beta")

    def output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o: (B, H, T, d/H) memory reads, x: (B, T, d) layer input -> (B, T, d)."""
        b, _, t, _ = o.shape
        o = self.out_norm(o.transpose(1, 2)).reshape(b, t, -1)
        if self.gate is not None:
            o = o * torch.sigmoid(self.gate(x))
        return self.out(o)

    def memory_state(self, state: State | None, batch_size: int) -> State:
        if state is None:
            return self.initial_memory(batch_size)
        return {n: state[f"mem.{n}"] for n in self.spec.state_names}

    def forward(self, x: torch.Tensor, state: State | None = None, pos: int = 0,
                keep_state: bool = True) -> tuple[torch.Tensor, State]:
        """x: (B, T, d) at absolute positions pos.. -> (y: (B, T, d), new state; {} without ``keep_state``).

        Outputs are the memory reads y_t = M_t(q_t) [T Eq 15] (or M_{t−1}(q_t) with ``read="before"``).
        ``keep_state=False`` skips the last chunk's write, which only the returned state would hold.
        A one-token call (decoding) takes :func:`~nestlearn.memory.step.memory_step`, without the chunk machinery.
        """
        q, k, v, cache = self.features(x, None if state is None else state.get("conv"))
        eta, alpha, beta = self.gate_values(x)
        anchor = dict(self.initial) if self.spec.retain == "initial" else None
        o, mem = memory_forward(self.spec, self.memory_state(state, x.shape[0]), q, k, v, eta, alpha, beta, pos,
                                final_state=keep_state, anchor=anchor, tag="mem")
        if not keep_state:
            return self.output(o, x), {}
        new_state = {f"mem.{n}": t for n, t in mem.items()}
        if cache is not None:
            new_state["conv"] = cache
        return self.output(o, x), new_state
