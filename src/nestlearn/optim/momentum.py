"""Momentum as an associative memory: delta momentum (NL-L Eq 49) and preconditioned momentum (Eq 47).

Both keep NL-L's sign convention (b) of Eq 33: the momentum m is the displacement itself,
W ← W + m, and the learning rate η sits inside the momentum update.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Union

import torch
from torch import Tensor

from nestlearn.errors import check_choice
from nestlearn.optim._common import PerParamOptimizer, apply_update, as_matrix, check_nonneg, check_pos, check_unit

PRECONDITIONERS = ("identity", "rms")
SIDES = ("right", "left")

Preconditioner = Union[str, Callable[[Tensor, dict], Tensor]]
"""``"identity"``, ``"rms"``, or a function (gradient, per-parameter state) -> P·gradient."""


def precondition(grad: Tensor, state: dict[str, Any], kind: Preconditioner, beta2: float, eps: float) -> Tensor:
    """Return P·∇L, the value the momentum memory is asked to store (Eq 47).

    - ``"identity"``: P = I.
    - ``"rms"``: a diagonal P over the entries of the gradient, P = diag(1/(√v̂ + ε)) with v an
      exponential average (β₂) of g², bias-corrected; state keys ``precond_sq`` and ``precond_step``.
    - a callable ``kind(grad, state)``: any user-supplied P, applied to the gradient in the
      parameter's shape; it may keep its own entries in ``state``. It is stored in the param
      group, so saving the ``state_dict`` with ``torch.save`` needs a module-level function.
    """
    if callable(kind):
        return kind(grad, state)
    if kind == "identity":
        return grad
    if "precond_sq" not in state:
        state["precond_sq"] = torch.zeros_like(grad)
        state["precond_step"] = 0
    state["precond_step"] += 1
    state["precond_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    corrected = state["precond_sq"] / (1.0 - beta2 ** state["precond_step"])
    return grad / corrected.sqrt().add_(eps)


def delta_momentum_update(m: Tensor, grad: Tensor, value: Tensor, lr: float, momentum: float, eta_m: float,
                          side: str, normalize_grad: bool) -> None:
    """One step of the delta-momentum memory, in place on the matrix ``m`` (rows × cols).

    ``side="right"`` (Eq 49, NL-L): m ← m(αI − η_m ĜᵀĜ) − η·value.
    ``side="left"`` (NL-N Eq 22): m ← (αI − η_m ĜĜᵀ)m − η·value.

    Ĝ is ``grad`` divided by its Frobenius norm when ``normalize_grad`` (D21), so that the factor's
    eigenvalues lie in [α − η_m, α]; a zero gradient gives Ĝ = 0. The Gram product is formed as
    (mĜᵀ)Ĝ so that no cols × cols matrix is built.
    """
    g = grad
    if normalize_grad:
        g = grad / torch.linalg.matrix_norm(grad).clamp_min(torch.finfo(grad.dtype).tiny)
    if side == "right":
        gram_term = (m @ g.mT) @ g
    else:
        gram_term = g @ (g.mT @ m)
    m.mul_(momentum).sub_(gram_term, alpha=eta_m).sub_(value, alpha=lr)


class _MomentumBase(PerParamOptimizer):
    """A momentum memory m asked to store P·∇L, with W ← W + m: shared checks and update order.

    Subclasses give the memory's initial state (:meth:`new_memory`) and its write rule
    (:meth:`write_memory`).
    """

    _name = "momentum"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group after checking its hyper-parameters."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        name = self._name
        check_nonneg(f"{name}.lr", group["lr"])
        check_unit(f"{name}.momentum", group["momentum"])
        check_nonneg(f"{name}.weight_decay", group["weight_decay"])
        check_unit(f"{name}.beta2", group["beta2"])
        check_pos(f"{name}.eps", group["eps"])
        if not callable(group["preconditioner"]):
            check_choice(f"{name}.preconditioner", group["preconditioner"], PRECONDITIONERS)

    def new_memory(self, param: Tensor) -> Tensor:
        """The zero momentum of ``param``."""
        raise NotImplementedError

    def write_memory(self, group: dict[str, Any], m: Tensor, grad: Tensor, value: Tensor) -> None:
        """Write the gradient ``grad`` with value P·∇L (``value``) into the momentum ``m`` in place."""
        raise NotImplementedError

    def update(self, group: dict[str, Any], param: Tensor, state: dict[str, Any]) -> None:
        """Precondition the gradient, write it into the memory, then W ← W(1 − lr·weight_decay) + m."""
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = self.new_memory(param)
        value = precondition(param.grad, state, group["preconditioner"], group["beta2"], group["eps"])
        self.write_memory(group, state["momentum_buffer"], param.grad, value)
        apply_update(param, group, state["momentum_buffer"], 1.0)


class DeltaMomentum(_MomentumBase):
    """Delta momentum, Eq 49 of NL-L (NL-N Eq 22 with ``side="left"``; D1, D21).

    Associative-memory reading (spec §2.4): the momentum is a linear memory m that maps the current
    gradient (the key) to the value P·G with the L2 regression objective ‖m Gᵀ − P‖² instead of
    the dot product of classical momentum. One GD step on that objective gives::

        m ← m(αI − η_m ĜᵀĜ) − η P G,        W ← W + m

    The Gram term is a gradient-dependent decay: the memory forgets what it stored along the
    directions of the current gradient (a delta rule). Frequency: one write per optimiser step.
    With ``eta_m=0`` this is classical heavy-ball momentum (m ← αm − ηG).

    Any tensor shape is accepted: matrices are used as they are, kernels with ndim > 2 as
    (out, in·∏kernel), vectors and scalars as one row.

    Non-finite gradients: a gradient with one inf or NaN entry makes ``step`` raise
    :class:`~nestlearn.errors.NonFiniteGradientError` naming the parameter, before any parameter
    or state changes (the Gram term spreads it over the momentum matrix); skip the batch or lower the learning rate and step again.

    Args:
        params: parameters or param groups.
        lr: η >= 0 (inside the momentum, as in Eq 49).
        momentum: α in [0, 1).
        eta_m: step size of the Gram term, >= 0. 1 is Eq 49 as printed (D21).
        side: ``"right"`` (Eq 49, cols × cols Gram) or ``"left"`` (NL-N Eq 22, rows × rows Gram).
        normalize_grad: divide G by its Frobenius norm inside the Gram term (D21).
        preconditioner: P; ``"identity"`` (D21 default), ``"rms"`` or a callable, see :func:`precondition`.
        beta2: EMA factor of the ``"rms"`` preconditioner, in [0, 1).
        eps: ε > 0 of the ``"rms"`` preconditioner.
        weight_decay: decoupled decay W ← W(1 − lr·weight_decay), >= 0.
    """

    _name = "DeltaMomentum"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        momentum: float = 0.9,
        eta_m: float = 1.0,
        side: str = "right",
        normalize_grad: bool = True,
        preconditioner: Preconditioner = "identity",
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, eta_m=eta_m, side=side, normalize_grad=normalize_grad,
                        preconditioner=preconditioner, beta2=beta2, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group after checking its hyper-parameters."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_nonneg("DeltaMomentum.eta_m", group["eta_m"])
        check_choice("DeltaMomentum.side", group["side"], SIDES)

    def new_memory(self, param: Tensor) -> Tensor:
        """A zero matrix of the shape of ``as_matrix(param)``."""
        return torch.zeros_like(as_matrix(param))

    def write_memory(self, group: dict[str, Any], m: Tensor, grad: Tensor, value: Tensor) -> None:
        """m ← m(αI − η_m ĜᵀĜ) − η P G (or the left form), see :func:`delta_momentum_update`."""
        delta_momentum_update(m, as_matrix(grad), as_matrix(value), group["lr"], group["momentum"], group["eta_m"],
                              group["side"], group["normalize_grad"])


class PreconditionedMomentum(_MomentumBase):
    """Preconditioned momentum, Eq 47 of NL-L (NL-N Eq 20).

    Associative-memory reading (spec §2.2): the momentum memory keeps the dot-product objective of
    classical momentum but is asked to store a more expressive value, P·∇L, instead of the gradient
    itself::

        m ← α m − η P ∇L,        W ← W + m

    Frequency: one write per optimiser step. With ``preconditioner="identity"`` this is classical
    heavy-ball momentum; the default ``"rms"`` uses a diagonal P = diag(1/(√v̂ + ε)) (D21), which
    makes the memory store Adam-normalised gradients.

    Non-finite gradients: a gradient with one inf or NaN entry makes ``step`` raise
    :class:`~nestlearn.errors.NonFiniteGradientError` naming the parameter, before any parameter
    or state changes (the momentum would keep it for good); skip the batch or lower the learning rate and step again.

    Args:
        params: parameters or param groups; any shape.
        lr: η >= 0 (inside the momentum, as in Eq 47).
        momentum: α in [0, 1).
        preconditioner: ``"rms"``, ``"identity"`` or a callable, see :func:`precondition`.
        beta2: EMA factor of the ``"rms"`` preconditioner, in [0, 1).
        eps: ε > 0 of the ``"rms"`` preconditioner.
        weight_decay: decoupled decay W ← W(1 − lr·weight_decay), >= 0.
    """

    _name = "PreconditionedMomentum"

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.9,
        preconditioner: Preconditioner = "rms",
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, preconditioner=preconditioner, beta2=beta2, eps=eps,
                        weight_decay=weight_decay)
        super().__init__(params, defaults)

    def new_memory(self, param: Tensor) -> Tensor:
        """A zero tensor of the parameter's shape."""
        return torch.zeros_like(param)

    def write_memory(self, group: dict[str, Any], m: Tensor, grad: Tensor, value: Tensor) -> None:
        """m ← α m − η P ∇L (Eq 47)."""
        m.mul_(group["momentum"]).sub_(value, alpha=group["lr"])
