"""One CMS level: its slow parameters, and the associative memory (:class:`MemorySpec`) its writes run."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nestlearn.layers.cms.config import CMSConfig
from nestlearn.layers.norm import RMSNorm
from nestlearn.memory import MemorySpec, activation, logit
from nestlearn.optim.periodic import STEP_PERIOD_ATTR

Tensor = torch.Tensor
State = dict[str, Tensor]


class CMSLevel(nn.Module):
    """The slow parameters of one level: norm gain, initial fast weights, k/v projections, η gate.

    Initial fast weights: ``w_in``, ``w_out`` (form ``"mlp"``) or ``w_gate``, ``w_up``, ``w_down``
    (form ``"swiglu"``); :attr:`initial` gives them as the memory's weights W1 (the output matrix)
    and W2 (the input matrix; for SwiGLU the stack [W_gate; W_up]). The k/v projections exist for
    the ``kv`` signal, the η gate for ``kv`` and ``lss``. Under the ``optimizer`` signal the level
    has neither and is tagged with its step period.

    A level that writes is the primitive's non-residual MLP memory (kind ``"mlp"`` or ``"swiglu"``)
    with plain GD and a read at its chunk's boundary state (Eq 71): query n(x); key n(k) and value
    v − k under objective L2 (``kv``), or key n(x) and value −u under ``dot`` (``lss``); step η_t,
    normalised per weight by its curvature with W_in's gain (``bounded``, design.md S3).

    Args:
        d_model: width d.
        hidden: hidden width of the level.
        period: the level's entry of ``cfg.schedule``: its chunk size C in tokens (``kv``, ``lss``)
            or its step period in optimiser steps (``optimizer``).
        cfg: the CMS config.
        eps: RMSNorm epsilon.
    """

    def __init__(self, d_model: int, hidden: int, period: int, cfg: CMSConfig, eps: float = 1e-6):
        super().__init__()
        self.signal = cfg.signal
        self.form = cfg.level_form
        writes = cfg.signal != "optimizer"
        self.chunk_size = period if writes else None
        self.static = cfg.eta_max == 0 or not writes
        # Without per-weight normalisation the 1/d stands in for the key's ‖n(k)‖² = d (D13's scale).
        self.eta_scale = cfg.eta_max / (period * (d_model if cfg.step_norm == "none" else 1)) if writes else 0.0
        self.eta_init = cfg.eta_init
        self.spec = MemorySpec(kind=cfg.level_form, objective="l2" if cfg.signal == "kv" else "dot", rule="gd",
                               momentum="none", chunk_size=period, read="boundary", activation=cfg.activation,
                               residual=False, step_norm=cfg.step_norm, curvature="gain",
                               write_bound=cfg.write_bound, field="cms")
        self.norm = RMSNorm(d_model, eps)
        if self.form == "mlp":
            self.w_in = nn.Parameter(torch.empty(hidden, d_model))
            self.w_out = nn.Parameter(torch.empty(d_model, hidden))
        else:
            self.w_gate = nn.Parameter(torch.empty(hidden, d_model))
            self.w_up = nn.Parameter(torch.empty(hidden, d_model))
            self.w_down = nn.Parameter(torch.empty(d_model, hidden))
        self.key = nn.Linear(d_model, d_model, bias=False) if cfg.signal == "kv" else None
        self.value = nn.Linear(d_model, d_model, bias=False) if cfg.signal == "kv" else None
        self.eta = nn.Linear(d_model, 1) if writes else None
        if not writes:
            setattr(self, STEP_PERIOD_ATTR, period)
        self.reset_special_parameters()

    @property
    def initial(self) -> State:
        """The memory's initial weights: W1 the output matrix, W2 the input one ([W_gate; W_up] for SwiGLU)."""
        if self.form == "mlp":
            return {"W1": self.w_out, "W2": self.w_in}
        return {"W1": self.w_down, "W2": torch.cat((self.w_gate, self.w_up))}

    def reset_special_parameters(self) -> None:
        inputs = (self.w_in,) if self.form == "mlp" else (self.w_gate, self.w_up)
        for w in inputs:
            nn.init.normal_(w, std=1.0 / math.sqrt(w.shape[1]))
        w_out = self.w_out if self.form == "mlp" else self.w_down
        nn.init.normal_(w_out, std=0.02 / math.sqrt(w_out.shape[1] / w_out.shape[0]))
        if self.eta is not None:
            nn.init.zeros_(self.eta.weight)
            nn.init.constant_(self.eta.bias, logit(self.eta_init))

    def static_read(self, x: Tensor) -> Tensor:
        """F(x) with the initial weights: x (B, n, d) -> (B, n, d), exactly the static MLP's products
        (those of :class:`~nestlearn.layers.mlp.SwiGLU` for the SwiGLU form, spec §6.4)."""
        z = self.norm(x)
        if self.form == "mlp":
            return x + F.linear(activation(self.spec.activation, F.linear(z, self.w_in)), self.w_out)
        return x + F.linear(F.silu(F.linear(z, self.w_gate)) * F.linear(z, self.w_up), self.w_down)

    def write_inputs(self, x: Tensor, x_norm: Tensor | None = None, u: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The memory's key, value and step for all tokens of x (B, n, d).

        Args:
            x: (B, n, d) the level's input; x_norm: n(x) if already computed.
            u: (B, n, d) the ``lss`` value ∂L_c/∂y (required for ``lss``, unused for ``kv``).

        Returns:
            the key: n(k) (``kv``) or n(x) (``lss``), (B, n, d); the value: v − k (``kv``) or −u
            (``lss``), (B, n, d); η: (B, n).
        """
        eta = self.eta_of(x)
        if self.signal == "lss":
            return (self.norm(x) if x_norm is None else x_norm), -u, eta
        k, v = F.linear(x, torch.cat((self.key.weight, self.value.weight))).chunk(2, dim=-1)
        return self.norm(k), v - k, eta

    def eta_of(self, x: Tensor) -> Tensor:
        """η_t: (B, n, d) -> (B, n)."""
        return self.eta_scale * torch.sigmoid(self.eta(x)).squeeze(-1)
