"""Optimiser configuration (the ``optim.*`` fields) and :func:`build_optimizer`, which the trainer calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from nestlearn.errors import ConfigError, check_choice
from nestlearn.optim._common import (
    check_int,
    check_nonneg,
    check_number,
    check_pos,
    check_unit,
)
from nestlearn.optim.dgd import DGD, FORMS
from nestlearn.optim.dmgd import ACTIVATIONS, DMGD, OUTPUTS
from nestlearn.optim.m3 import M3, VARIANTS
from nestlearn.optim.momentum import (
    PRECONDITIONERS,
    SIDES,
    DeltaMomentum,
    PreconditionedMomentum,
)
from nestlearn.optim.muon import SCALE_MODES, Muon
from nestlearn.optim.newton_schulz import NS_COEFFICIENTS, NS_STEPS
from nestlearn.optim.periodic import PeriodicOptimizer, periodic_parameters
from nestlearn.optim.routing import (
    CombinedOptimizer,
    ParamRouting,
    adamw_groups,
    route_parameters,
)

OPTIMIZER_NAMES = ("adamw", "muon", "m3", "dmgd", "delta", "precond", "dgd")
NS_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class OptimConfig:
    """The ``optim.*`` configuration fields.

    Every name except ``"adamw"`` builds a :class:`~nestlearn.optim.routing.CombinedOptimizer`:
    the named optimiser on the hidden 2-D matrices and AdamW on everything else (D20, see
    :func:`~nestlearn.optim.routing.route_parameters`); ``"adamw"`` builds one ``torch.optim.AdamW``.
    In both cases AdamW decays tensors with ndim >= 2 except embeddings (and heads tied to them),
    and never decays norms, biases or scalars.

    Attributes:
        name: one of ``"adamw"``, ``"muon"``, ``"m3"``, ``"dmgd"``, ``"delta"`` (delta momentum,
            Eq 49), ``"precond"`` (preconditioned momentum, Eq 47), ``"dgd"`` (DGD on the
            ``nn.Linear`` weights among the hidden matrices; other hidden matrices go to AdamW).
        lr: learning rate of the named optimiser, >= 0.
        weight_decay: decoupled weight decay of both the named optimiser and AdamW, >= 0.
        betas: AdamW uses the first two; M3 needs three (β₁, β₂, β₃); each in [0, 1).
        eps: ε > 0 of AdamW, M3 and the ``"rms"`` preconditioner.
        adamw_lr: learning rate of the AdamW group when ``name`` is not ``"adamw"``; 0 (the default)
            means "same as ``lr``". Muon-style learning rates (~0.02) are too large for AdamW, so
            set it explicitly with Muon (e.g. 3e-4), or use ``muon_scale="rms"``, which makes one
            learning rate fit both.
        momentum: Muon's μ; α of delta and preconditioned momentum; DMGD's memory retention. [0, 1).
        nesterov: Muon's Nesterov look-ahead.
        ns_steps: Newton–Schulz steps (Muon, M3, DMGD with NS output), >= 0.
        ns_coefficients: Newton–Schulz quintic coefficients (a, b, c).
        ns_dtype: Muon's and M3's Newton–Schulz compute dtype, ``"float32"`` or ``"bfloat16"`` (GPUs).
        muon_scale: Muon's update scaling, ``"shape"`` (sqrt(max(1, rows/cols))), ``"rms"`` or ``"none"``.
        alpha: M3's weight on the slow momentum, >= 0.
        slow_period: M3's chunk length f in optimiser steps, >= 1.
        variant: M3's ``"paper"`` (Algorithm 1) or ``"ema"`` (D19).
        eta_m: delta momentum's Gram step size, >= 0.
        side: delta momentum's ``"right"`` (Eq 49) or ``"left"`` (NL-N Eq 22) Gram product (D1).
        normalize_grad: delta momentum normalises the gradient in the Gram term (D21).
        preconditioner: P of delta / preconditioned momentum: ``"auto"`` (identity for delta,
            rms for precond), ``"identity"`` or ``"rms"``.
        memory_lr: DMGD's inner learning rate, >= 0.
        memory_hidden: DMGD's memory width, >= 1.
        memory_activation: DMGD's memory activation, ``"tanh"`` or ``"identity"``.
        dmgd_output: DMGD's ``"linear"`` (Eq 50) or ``"newton_schulz"`` (Eq 52) output.
        dgd_form: DGD's ``"long"`` (Eq 57) or ``"neurips"`` (NL-N Eq 29) form (D1).
    """

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, ...] = (0.9, 0.999, 0.9)
    eps: float = 1e-8
    adamw_lr: float = 0.0
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = NS_STEPS
    ns_coefficients: tuple[float, ...] = NS_COEFFICIENTS
    ns_dtype: str = "float32"
    muon_scale: str = "shape"
    alpha: float = 1.0
    slow_period: int = 100
    variant: str = "paper"
    eta_m: float = 1.0
    side: str = "right"
    normalize_grad: bool = True
    preconditioner: str = "auto"
    memory_lr: float = 1.0
    memory_hidden: int = 64
    memory_activation: str = "tanh"
    dmgd_output: str = "linear"
    dgd_form: str = "long"

    def validate(self) -> None:
        """Raise :class:`~nestlearn.errors.ConfigError` naming the first invalid ``optim.*`` field."""
        check_choice("optim.name", self.name, OPTIMIZER_NAMES)
        check_nonneg("optim.lr", self.lr)
        check_nonneg("optim.weight_decay", self.weight_decay)
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) not in (2, 3):
            raise ConfigError("optim.betas", f"must be 2 or 3 numbers (beta1, beta2[, beta3]), got {self.betas!r}")
        if self.name == "m3" and len(self.betas) != 3:
            raise ConfigError("optim.betas", f"m3 needs 3 numbers (beta1, beta2, beta3), got {self.betas!r}")
        for i, beta in enumerate(self.betas):
            check_unit(f"optim.betas[{i}]", beta)
        check_pos("optim.eps", self.eps)
        check_nonneg("optim.adamw_lr", self.adamw_lr)
        check_unit("optim.momentum", self.momentum)
        _check_bool("optim.nesterov", self.nesterov)
        check_int("optim.ns_steps", self.ns_steps, 0)
        if not isinstance(self.ns_coefficients, (tuple, list)) or len(self.ns_coefficients) != 3:
            raise ConfigError("optim.ns_coefficients", f"must be three numbers (a, b, c), got {self.ns_coefficients!r}")
        for i, coefficient in enumerate(self.ns_coefficients):
            check_number(f"optim.ns_coefficients[{i}]", coefficient)
        check_choice("optim.ns_dtype", self.ns_dtype, NS_DTYPES)
        check_choice("optim.muon_scale", self.muon_scale, SCALE_MODES)
        check_nonneg("optim.alpha", self.alpha)
        check_int("optim.slow_period", self.slow_period, 1)
        check_choice("optim.variant", self.variant, VARIANTS)
        check_nonneg("optim.eta_m", self.eta_m)
        check_choice("optim.side", self.side, SIDES)
        _check_bool("optim.normalize_grad", self.normalize_grad)
        check_choice("optim.preconditioner", self.preconditioner, ("auto",) + PRECONDITIONERS)
        check_nonneg("optim.memory_lr", self.memory_lr)
        check_int("optim.memory_hidden", self.memory_hidden, 1)
        check_choice("optim.memory_activation", self.memory_activation, ACTIVATIONS)
        check_choice("optim.dmgd_output", self.dmgd_output, OUTPUTS)
        check_choice("optim.dgd_form", self.dgd_form, FORMS)


def _check_bool(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(field, f"must be true or false, got {value!r}")


def _matrix_optimizer(model: nn.Module, cfg: OptimConfig, routing: ParamRouting) -> tuple[Optimizer | None, list]:
    """Build the named optimiser on the routed matrices; return it and the matrices it leaves to AdamW."""
    named = routing.matrix
    if cfg.name == "dgd":
        linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
        left = [(n, p) for n, p in named if id(p) not in linear_weights]
        chosen = [p for _, p in named if id(p) in linear_weights]
        if not chosen:
            return None, left
        return DGD(model, lr=cfg.lr, form=cfg.dgd_form, weight_decay=cfg.weight_decay, params=chosen), left
    if not named:
        return None, []
    coefficients = tuple(cfg.ns_coefficients)
    if cfg.name == "muon":
        optimizer: Optimizer = Muon(named, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                    weight_decay=cfg.weight_decay, ns_steps=cfg.ns_steps,
                                    ns_coefficients=coefficients, ns_dtype=NS_DTYPES[cfg.ns_dtype],
                                    scale=cfg.muon_scale)
    elif cfg.name == "m3":
        optimizer = M3(named, lr=cfg.lr, betas=tuple(cfg.betas), alpha=cfg.alpha, eps=cfg.eps,
                       ns_steps=cfg.ns_steps, ns_coefficients=coefficients, slow_period=cfg.slow_period,
                       variant=cfg.variant, weight_decay=cfg.weight_decay, ns_dtype=NS_DTYPES[cfg.ns_dtype])
    elif cfg.name == "dmgd":
        optimizer = DMGD(named, lr=cfg.lr, momentum=cfg.momentum, memory_lr=cfg.memory_lr,
                         hidden=cfg.memory_hidden, activation=cfg.memory_activation, output=cfg.dmgd_output,
                         ns_steps=cfg.ns_steps, ns_coefficients=coefficients, weight_decay=cfg.weight_decay)
    elif cfg.name == "delta":
        optimizer = DeltaMomentum(named, lr=cfg.lr, momentum=cfg.momentum, eta_m=cfg.eta_m, side=cfg.side,
                                  normalize_grad=cfg.normalize_grad,
                                  preconditioner="identity" if cfg.preconditioner == "auto" else cfg.preconditioner,
                                  beta2=cfg.betas[1], eps=cfg.eps, weight_decay=cfg.weight_decay)
    else:
        optimizer = PreconditionedMomentum(named, lr=cfg.lr, momentum=cfg.momentum,
                                           preconditioner="rms" if cfg.preconditioner == "auto" else cfg.preconditioner,
                                           beta2=cfg.betas[1], eps=cfg.eps, weight_decay=cfg.weight_decay)
    return optimizer, []


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> Optimizer:
    """Validate ``cfg`` and build the optimiser for ``model``'s trainable parameters.

    ``cfg.name == "adamw"``: a ``torch.optim.AdamW`` with two groups (decayed: ndim >= 2 except
    embeddings; not decayed: the rest). Any other name: a :class:`CombinedOptimizer` whose first
    child is the named optimiser over the hidden matrices (if there are any) and whose second
    child is AdamW over everything else (if there is anything), with learning rate
    ``cfg.adamw_lr or cfg.lr``. Both work with ``torch.optim.lr_scheduler`` schedulers.

    If the model tags modules with a step period > 1 (CMS levels under ``cms.signal = "optimizer"``,
    D13), the optimiser is wrapped in a :class:`~nestlearn.optim.periodic.PeriodicOptimizer`, which
    steps those parameters only every p-th step with their summed gradients.
    """
    optimizer = _build(model, cfg)
    periodic = periodic_parameters(model)
    return PeriodicOptimizer(optimizer, periodic) if periodic else optimizer


def _build(model: nn.Module, cfg: OptimConfig) -> Optimizer:
    cfg.validate()
    routing = route_parameters(model)
    if not routing.matrix and not routing.adamw:
        raise ConfigError("optim.name", "the model has no trainable parameters to optimise")
    betas = (cfg.betas[0], cfg.betas[1])
    if cfg.name == "adamw":
        order = {id(p): i for i, (_, p) in enumerate(model.named_parameters())}
        named = sorted(routing.matrix + routing.adamw, key=lambda item: order[id(item[1])])
        return torch.optim.AdamW(adamw_groups(named, routing.reasons, cfg.weight_decay), lr=cfg.lr, betas=betas,
                                 eps=cfg.eps)
    main, left = _matrix_optimizer(model, cfg, routing)
    children: list[Optimizer] = [main] if main is not None else []
    rest = left + routing.adamw
    if rest:
        children.append(torch.optim.AdamW(adamw_groups(rest, routing.reasons, cfg.weight_decay),
                                          lr=cfg.adamw_lr or cfg.lr, betas=betas, eps=cfg.eps))
    return CombinedOptimizer(children)
