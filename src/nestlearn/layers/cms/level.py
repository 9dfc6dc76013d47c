"""One CMS level's slow parameters: norm gain, initial fast weights, k/v projections, η gate."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nestlearn.layers.cms.chunk import ChunkTerms, State, Tensor, apply_linear, chunk_terms, swiglu_apply
from nestlearn.layers.cms.config import CMSConfig
from nestlearn.layers.norm import RMSNorm
from nestlearn.memory import MemorySpec, activation, compiled, logit
from nestlearn.optim.periodic import STEP_PERIOD_ATTR


class CMSLevel(nn.Module):
    """The slow parameters of one level: norm gain, initial fast weights, k/v projections, η gate.

    Initial fast weights: ``w_in``, ``w_out`` (form ``"mlp"``) or ``w_gate``, ``w_up``, ``w_down``
    (form ``"swiglu"``); :attr:`initial` names them by their state keys W1, W2(, W3). The k/v
    projections exist for the ``kv`` signal, the η gate for ``kv`` and ``lss``. Under the
    ``optimizer`` signal the level has neither and is tagged with its step period.

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
        self.spec = MemorySpec(kind="mlp", objective="l2" if cfg.signal == "kv" else "dot", rule="gd",
                               momentum="none", chunk_size=period, activation=cfg.activation, residual=False,
                               step_norm=cfg.step_norm, write_bound=cfg.write_bound, field="cms")
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
        """State key -> initial fast weight: W1 is the output matrix, W2 (and W3) the input ones."""
        if self.form == "mlp":
            return {"W1": self.w_out, "W2": self.w_in}
        return {"W1": self.w_down, "W2": self.w_gate, "W3": self.w_up}

    def reset_special_parameters(self) -> None:
        init = self.initial
        for name in ("W2", "W3")[:len(init) - 1]:
            nn.init.normal_(init[name], std=1.0 / math.sqrt(init[name].shape[1]))
        w_out = init["W1"]
        nn.init.normal_(w_out, std=0.02 / math.sqrt(w_out.shape[1] / w_out.shape[0]))
        if self.eta is not None:
            nn.init.zeros_(self.eta.weight)
            nn.init.constant_(self.eta.bias, logit(self.eta_init))

    def read(self, weights: State, x: Tensor, x_norm: Tensor | None = None) -> Tensor:
        """F(x) with fixed weights (state names): x (B, n, d) -> (B, n, d); ``x_norm`` is n(x) if already computed.

        With the unbatched initial weights this is exactly the static MLP, the same products as
        :class:`~nestlearn.layers.mlp.SwiGLU` for the SwiGLU form (spec §6.4).
        """
        x_norm = self.norm(x) if x_norm is None else x_norm
        if self.form == "mlp":
            return x + apply_linear(activation(self.spec.activation, apply_linear(x_norm, weights["W2"])), weights["W1"])
        return x + swiglu_apply(weights, x_norm)

    def write_inputs(self, x: Tensor, x_norm: Tensor | None = None, u: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The parts of the write that do not depend on the fast weights, for all tokens of x (B, n, d).

        Args:
            x: (B, n, d) the level's input; x_norm: n(x) if already computed.
            u: (B, n, d) the ``lss`` value ∂L_c/∂y (required for ``lss``, unused for ``kv``).

        Returns:
            the inner key: n(k) (``kv``) or n(x) itself (``lss``, the same tensor, so that
            :func:`chunk_terms` shares the read's products), (B, n, d); the inner value: v − k
            (``kv``) or −u (``lss``), (B, n, d); η: (B, n, 1).
        """
        eta = self.eta_of(x).unsqueeze(-1)
        if self.signal == "lss":
            return (self.norm(x) if x_norm is None else x_norm), -u, eta
        k, v = F.linear(x, torch.cat((self.key.weight, self.value.weight))).chunk(2, dim=-1)
        return self.norm(k), v - k, eta

    def terms(self, weights: State, x_norm: Tensor, key: Tensor, target: Tensor, eta: Tensor,
              read: bool = True, write: bool = True) -> ChunkTerms:
        """:func:`chunk_terms` with this level's form, activation, objective and steps (packed weights)."""
        return compiled(chunk_terms)(self.form, self.spec.activation, self.spec.objective, weights, x_norm, key,
                                     target, eta, read, write, self.step)

    @property
    def step(self) -> MemorySpec | None:
        """The spec that gives each weight its own step, or None for the plain η_t (``step_norm="none"``)."""
        return None if self.spec.step_norm == "none" and self.spec.write_bound <= 0 else self.spec

    def eta_of(self, x: Tensor) -> Tensor:
        """η_t: (B, n, d) -> (B, n)."""
        return self.eta_scale * torch.sigmoid(self.eta(x)).squeeze(-1)
