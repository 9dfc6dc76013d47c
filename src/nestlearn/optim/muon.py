"""Muon: momentum followed by Newton–Schulz orthogonalisation (NL-L Eq 42; Eq 52 with σ = NS)."""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import Tensor

from nestlearn.errors import check_choice
from nestlearn.optim._common import (
    PerParamOptimizer,
    apply_update,
    check_float_dtype,
    check_nonneg,
    check_unit,
    is_dtensor,
    require_matrices,
)
from nestlearn.optim.newton_schulz import NS_COEFFICIENTS, NS_STEPS, newton_schulz, validate_ns_args

SCALE_MODES = ("shape", "rms", "none")


def muon_scale(rows: int, cols: int, mode: str) -> float:
    """The factor applied to the orthogonalised update of a ``rows × cols`` matrix.

    - ``"shape"``: sqrt(max(1, rows/cols)). An orthogonalised matrix has min(rows, cols) unit
      singular values, so its entries have RMS 1/sqrt(max(rows, cols)); the factor lifts tall
      matrices so that every update has RMS 1/sqrt(cols), which depends on the fan-in only.
    - ``"rms"``: 0.2·sqrt(max(rows, cols)), which gives the update an RMS of about 0.2, the typical
      RMS of an AdamW update, so AdamW's learning rate and weight decay carry over unchanged.
    - ``"none"``: 1.
    """
    if mode == "shape":
        return math.sqrt(max(1.0, rows / cols))
    if mode == "rms":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


def orthogonalise(matrix: Tensor, steps: int, coefficients: tuple[float, float, float],
                  compute_dtype: torch.dtype) -> Tensor:
    """NS_T(matrix) for a plain matrix or an FSDP2 shard of one (a DTensor sharded by rows).

    Newton–Schulz couples all rows through the Gram matrix, so a shard is all-gathered
    (``full_tensor()``), every rank orthogonalises the whole matrix (identical bits everywhere) and
    keeps its own rows, laid out like the input; ``nestlearn.train.distributed`` says why gather
    rather than owner-rank.
    """
    if not is_dtensor(matrix):
        return newton_schulz(matrix, steps, coefficients, compute_dtype=compute_dtype)
    from torch.distributed.tensor import distribute_tensor

    full = newton_schulz(matrix.full_tensor(), steps, coefficients, compute_dtype=compute_dtype)
    return distribute_tensor(full, matrix.device_mesh, matrix.placements, src_data_rank=None)


def momentum_direction(grad: Tensor, buffer: Tensor, momentum: float, nesterov: bool) -> Tensor:
    """Update ``buffer`` in place to μ·buffer + g and return the direction to orthogonalise.

    With ``nesterov`` the direction is g + μ·buffer (the look-ahead), otherwise the buffer itself.
    """
    buffer.mul_(momentum).add_(grad)
    if nesterov:
        return grad.add(buffer, alpha=momentum)
    return buffer


class Muon(PerParamOptimizer):
    """Muon (NL-L Eq 42): W ← W − lr·s·NS_T(m), m ← μ m + ∇L, with decoupled weight decay.

    Associative-memory reading (spec §2.3, §2.7): two nested levels act on every weight matrix.
    The momentum m is a value-less memory of gradients, written once per step (objective
    ⟨m, ∇L⟩, inner rule: one GD step with decay μ). Newton–Schulz is a faster inner level that
    maps the momentum to the nearest semi-orthogonal matrix (objective ‖OᵀO − I‖², T steps per
    outer step). Equivalently it is Eq 52 with a linear memory and σ = Newton–Schulz.

    Only matrices are accepted: tensors with ndim > 2 (convolution kernels) are orthogonalised as
    (out, in·∏kernel) matrices; a tensor with ndim < 2 raises ``ValueError`` naming it. Use
    :func:`nestlearn.optim.route_parameters` to send embeddings, heads, norms and biases to AdamW.

    Non-finite gradients: a gradient with one inf or NaN entry makes ``step`` raise
    :class:`~nestlearn.errors.NonFiniteGradientError` naming the parameter, before any parameter
    or state changes (Newton–Schulz would spread it over the whole matrix and the momentum); skip the batch or lower the learning rate and step again.

    Args:
        params: parameters or param groups (``(name, tensor)`` pairs give better error messages).
        lr: learning rate, >= 0.
        momentum: μ in [0, 1).
        nesterov: orthogonalise g + μ·m instead of m.
        weight_decay: decoupled decay, W ← W(1 − lr·weight_decay), >= 0.
        ns_steps: Newton–Schulz iterations T (D20: 5).
        ns_coefficients: quintic coefficients (a, b, c) (D20: Muon's).
        ns_dtype: dtype of the Newton–Schulz iteration (D20: float32; bfloat16 is an option on GPUs).
        scale: update scaling, one of :data:`SCALE_MODES`; see :func:`muon_scale`. The default
            ``"shape"`` multiplies by sqrt(max(1, rows/cols)).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = NS_STEPS,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        ns_dtype: torch.dtype = torch.float32,
        scale: str = "shape",
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        ns_steps=ns_steps, ns_coefficients=tuple(ns_coefficients), ns_dtype=ns_dtype,
                        scale=scale)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group after checking its hyper-parameters and that every tensor is a matrix."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_nonneg("Muon.lr", group["lr"])
        check_unit("Muon.momentum", group["momentum"])
        check_nonneg("Muon.weight_decay", group["weight_decay"])
        validate_ns_args(group["ns_steps"], group["ns_coefficients"], "Muon")
        check_float_dtype("Muon.ns_dtype", group["ns_dtype"])
        check_choice("Muon.scale", group["scale"], SCALE_MODES)
        require_matrices("Muon", group)

    def update(self, group: dict[str, Any], param: Tensor, state: dict[str, Any]) -> None:
        """Momentum, Newton–Schulz, scaling and decoupled decay for one matrix."""
        grad = param.grad.reshape(param.shape[0], -1)
        if not state:
            state["momentum_buffer"] = torch.zeros_like(grad)
        direction = momentum_direction(grad, state["momentum_buffer"], group["momentum"], group["nesterov"])
        update = orthogonalise(direction, group["ns_steps"], group["ns_coefficients"], group["ns_dtype"])
        apply_update(param, group, update, -group["lr"] * muon_scale(*update.shape, group["scale"]))
