"""Deep Momentum Gradient Descent (DMGD): the momentum is an MLP memory, NL-L Eq 50 (Eq 52 optional).

Decisions.md D21 fixes what the paper leaves open: the internal objective is the L2 regression
½‖m(u) − P u‖² (with P = I) rather than the unbounded ⟨m(u), 1⟩, and the MLP is applied row-wise
to the gradient matrix, each row being one sample, never to the flattened tensor.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import Tensor

from nestlearn.errors import check_choice
from nestlearn.optim._common import PerParamOptimizer, apply_update, as_matrix, check_int, check_nonneg, check_unit
from nestlearn.optim.muon import muon_scale
from nestlearn.optim.newton_schulz import NS_COEFFICIENTS, NS_STEPS, newton_schulz, validate_ns_args

ACTIVATIONS = ("tanh", "identity")
OUTPUTS = ("linear", "newton_schulz")


def _activate(h: Tensor, activation: str) -> tuple[Tensor, Tensor]:
    """σ(h) and σ'(h)."""
    if activation == "identity":
        return h, torch.ones_like(h)
    a = torch.tanh(h)
    return a, 1.0 - a * a


def memory_read(rows: Tensor, w_in: Tensor, w_out: Tensor, activation: str) -> Tensor:
    """m(u) = W_out σ(W_in u) for every row u of ``rows`` (n_rows × cols) -> (n_rows × cols)."""
    hidden, _ = _activate(rows @ w_in.mT, activation)
    return hidden @ w_out.mT


def memory_grads(rows: Tensor, w_in: Tensor, w_out: Tensor, activation: str) -> tuple[Tensor, Tensor]:
    """Closed-form gradients of L⁽²⁾ = ½ Σ_rows ‖m(u) − u‖² with respect to (W_in, W_out).

    With H = U W_inᵀ, A = σ(H), E = A W_outᵀ − U: ∂/∂W_out = EᵀA and ∂/∂W_in = ((E W_out) ⊙ σ'(H))ᵀ U.
    """
    hidden, slope = _activate(rows @ w_in.mT, activation)
    error = hidden @ w_out.mT - rows
    grad_out = error.mT @ hidden
    grad_in = ((error @ w_out) * slope).mT @ rows
    return grad_in, grad_out


def frobenius_norm(matrix: Tensor) -> Tensor:
    """‖matrix‖_F without overflow: entries of 1e30 square past float32's range, so where the plain
    norm is inf it is taken of matrix / max|entry| and scaled back (elsewhere it is the plain norm)."""
    norm = torch.linalg.matrix_norm(matrix)
    peak = matrix.abs().amax().clamp_min(torch.finfo(matrix.dtype).tiny)
    return torch.where(torch.isinf(norm), torch.linalg.matrix_norm(matrix / peak) * peak, norm)


class DMGD(PerParamOptimizer):
    """Deep Momentum GD, Eq 50 of NL-L (NL-N Eq 23), with the L2 internal objective of D21.

    Associative-memory reading (spec §2.5): the momentum is no longer a matrix but a 2-layer MLP
    memory m(u) = W_out σ(W_in u) that lives in its own level. For a parameter W with gradient
    G (rows × cols; kernels are viewed as (out, in·∏kernel), vectors as one row):

    - keys and values: the rows u of U = G/‖G‖_F, each row one sample (D21); the value of u is u
      itself (P = I), so the memory learns the map from gradient rows to themselves;
    - objective: L⁽²⁾ = ½ Σ_rows ‖m(u) − u‖²;
    - inner rule: one GD step per optimiser step with its own learning rate ``memory_lr`` and
      retention α (``momentum``): θ_m ← α θ_m − η_m ∇L⁽²⁾(θ_m; U) (Eq 50);
    - frequency: once per optimiser step, before the read (Eq 50 reads m_{i+1}(u_i)).

    The update is W ← W − lr · ‖G‖_F · m_{i+1}(U) (the memory's output in gradient units; Eq 50
    writes W + m(u) with the minus sign folded into m, which here regresses +u). With
    ``output="newton_schulz"`` it is W ← W − lr · s · NS(m_{i+1}(U)), the non-linear output of Eq 52,
    with Muon's shape factor s = sqrt(max(1, rows/cols)).

    The memory therefore acts as a filter learned across steps: gradient directions that recur are
    reproduced, directions it has not seen (or has forgotten, at rate α) are attenuated. The paper
    does not evaluate DMGD; everything beyond Eq 50 here is a project choice (D21).

    State per parameter: ``w_in`` (hidden × cols, Gaussian with std 1/sqrt(hidden), drawn from a
    generator seeded by ``seed`` and the parameter's position), ``w_out`` (cols × hidden, zero).

    Non-finite gradients: a gradient with one inf or NaN entry makes ``step`` raise
    :class:`~nestlearn.errors.NonFiniteGradientError` naming the parameter, before any parameter
    or state changes (the Frobenius norm and the memory MLP would spread it to every row); skip the batch or lower the learning rate and step again.

    Args:
        params: parameters or param groups; any shape.
        lr: step size >= 0.
        momentum: retention α in [0, 1) of the memory's parameters.
        memory_lr: η_m >= 0, the inner learning rate.
        hidden: width of the memory MLP, >= 1.
        activation: ``"tanh"`` (odd, so m(−u) = −m(u)) or ``"identity"`` (a factored linear memory).
        output: ``"linear"`` (Eq 50) or ``"newton_schulz"`` (Eq 52 with σ = NS).
        ns_steps, ns_coefficients: Newton–Schulz settings for ``output="newton_schulz"``.
        weight_decay: decoupled decay W ← W(1 − lr·weight_decay), >= 0.
        seed: seed of the memories' initialisation.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        momentum: float = 0.9,
        memory_lr: float = 1.0,
        hidden: int = 64,
        activation: str = "tanh",
        output: str = "linear",
        ns_steps: int = NS_STEPS,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, memory_lr=memory_lr, hidden=hidden, activation=activation,
                        output=output, ns_steps=ns_steps, ns_coefficients=tuple(ns_coefficients),
                        weight_decay=weight_decay, seed=seed)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group after checking its hyper-parameters."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_nonneg("DMGD.lr", group["lr"])
        check_unit("DMGD.momentum", group["momentum"])
        check_nonneg("DMGD.memory_lr", group["memory_lr"])
        check_int("DMGD.hidden", group["hidden"], 1)
        check_choice("DMGD.activation", group["activation"], ACTIVATIONS)
        check_choice("DMGD.output", group["output"], OUTPUTS)
        validate_ns_args(group["ns_steps"], group["ns_coefficients"], "DMGD")
        check_nonneg("DMGD.weight_decay", group["weight_decay"])
        check_int("DMGD.seed", group["seed"], 0)

    def _init_memory(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        # Seeded by the parameter's 1-based position over all groups, counting parameters without
        # gradients too, so a memory's initialisation does not depend on which others had gradients.
        everything = (p for g in self.param_groups for p in g["params"])
        position = next(i for i, p in enumerate(everything, 1) if p is param)
        cols = as_matrix(param).shape[1]
        generator = torch.Generator().manual_seed(group["seed"] * 1_000_003 + position)
        w_in = torch.randn(group["hidden"], cols, generator=generator) / math.sqrt(group["hidden"])
        return {"w_in": w_in.to(device=param.device, dtype=param.dtype),
                "w_out": param.new_zeros(cols, group["hidden"])}

    def update(self, group: dict[str, Any], param: Tensor, state: dict[str, Any]) -> None:
        """Write the parameter's gradient into its memory, then step along the memory's output."""
        if not state:
            state.update(self._init_memory(param, group))
        grad = as_matrix(param.grad)
        norm = frobenius_norm(grad)
        rows = grad / norm.clamp_min(torch.finfo(grad.dtype).tiny)
        w_in, w_out = state["w_in"], state["w_out"]
        grad_in, grad_out = memory_grads(rows, w_in, w_out, group["activation"])
        w_in.mul_(group["momentum"]).sub_(grad_in, alpha=group["memory_lr"])
        w_out.mul_(group["momentum"]).sub_(grad_out, alpha=group["memory_lr"])
        recalled = memory_read(rows, w_in, w_out, group["activation"])
        if group["output"] == "newton_schulz":
            update = newton_schulz(recalled, group["ns_steps"], group["ns_coefficients"])
            update.mul_(muon_scale(*update.shape, "shape"))
        else:
            update = recalled.mul_(norm)
        apply_update(param, group, update, -group["lr"])
