"""Helpers shared by the optimisers: hyper-parameter checks, named parameters, the step loop, matrix views."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from nestlearn.errors import ConfigError, NonFiniteGradientError, check_positive, check_range


def check_number(field: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite real number (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(field, f"must be a finite number, got {value!r}")


def check_nonneg(field: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number >= 0."""
    check_number(field, value)
    check_positive(field, value, allow_zero=True)


def check_pos(field: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number > 0."""
    check_number(field, value)
    check_positive(field, value)


def check_unit(field: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` lies in [0, 1)."""
    check_number(field, value)
    check_range(field, value, 0.0, 1.0, high_open=True)


def check_int(field: str, value: Any, minimum: int) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(field, f"must be an integer >= {minimum}, got {value!r}")


def check_float_dtype(field: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a floating-point ``torch.dtype``."""
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ConfigError(field, f"must be a floating-point torch.dtype (e.g. torch.float32), got {value!r}")


def _optimizer_takes_names() -> bool:
    """Whether ``torch.optim.Optimizer`` accepts ``(name, tensor)`` pairs (torch >= 2.6; 2.4/2.5 raise TypeError)."""
    try:
        torch.optim.SGD([("probe", torch.zeros(1, requires_grad=True))], lr=0.0)
    except TypeError:
        return False
    return True


OPTIMIZER_TAKES_NAMES = _optimizer_takes_names()
NAMES_KEY = "nestlearn_param_names"
"""Group key that holds the parameter names where torch's own ``"param_names"`` is unavailable."""


def split_param_names(param_group: dict[str, Any]) -> dict[str, Any]:
    """Make a group of ``(name, tensor)`` pairs acceptable to ``torch.optim.Optimizer`` on torch < 2.6.

    torch >= 2.6 splits the pairs itself and keeps the names under ``"param_names"``, so the group is
    returned as it is. Older versions reject the pairs, so here ``params`` keeps the tensors and the
    names move to :data:`NAMES_KEY`, which ``state_dict`` saves like any other group option. Returns
    the same dict, changed in place.
    """
    params = param_group["params"]
    if OPTIMIZER_TAKES_NAMES or isinstance(params, (Tensor, set)):
        return param_group
    params = list(params)
    param_group["params"] = params
    named = [isinstance(p, tuple) for p in params]
    if any(named):
        if not all(named):
            raise ValueError("all optimizer params should be with or without names; some names are missing")
        param_group["params"] = [tensor for _, tensor in params]
        param_group[NAMES_KEY] = [name for name, _ in params]
    return param_group


def group_names(group: dict[str, Any]) -> list[str] | None:
    """The names of ``group["params"]`` on any torch version, or None for a group built without names."""
    return group.get("param_names", group.get(NAMES_KEY))


def param_label(group: dict[str, Any], param: Tensor) -> str:
    """A human-readable name for ``param`` of ``group``: its name when the group has names."""
    index = next(i for i, p in enumerate(group["params"]) if p is param)
    names = group_names(group)
    if names is not None:
        return repr(names[index])
    return f"#{index} of a param group (shape {tuple(param.shape)})"


def as_matrix(tensor: Tensor) -> Tensor:
    """View ``tensor`` as a 2-D matrix: (rows, everything else) for ndim >= 2, one row otherwise.

    Convolution kernels (out, in, *k) become (out, in·∏k), which is how their output units see them.
    """
    if tensor.ndim >= 2:
        return tensor.reshape(tensor.shape[0], -1)
    return tensor.reshape(1, -1)


def decoupled_weight_decay(param: Tensor, lr: float, weight_decay: float) -> None:
    """Shrink ``param`` in place by (1 − lr·weight_decay), the AdamW-style decoupled decay."""
    if weight_decay != 0.0:
        param.mul_(1.0 - lr * weight_decay)


def apply_update(param: Tensor, group: dict[str, Any], update: Tensor, alpha: float) -> None:
    """W ← W(1 − lr·weight_decay) + alpha·update with the group's lr and weight_decay.

    ``update`` may be a matrix view (:func:`as_matrix`) of the parameter's shape.
    """
    decoupled_weight_decay(param, group["lr"], group["weight_decay"])
    param.add_(update.view_as(param), alpha=alpha)


def evaluate_closure(closure: Any) -> Any:
    """Call ``closure`` with gradients enabled (``step`` itself runs under no_grad) and return its loss."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def require_matrices(owner: str, group: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first parameter of ``group`` with fewer than 2 dimensions.

    Orthogonalising optimisers (Muon, M3) act on matrices; vectors and scalars belong to AdamW (D20).
    """
    for param in group["params"]:
        if param.ndim < 2:
            raise ValueError(
                f"{owner}: parameter {param_label(group, param)} has shape {tuple(param.shape)}; "
                f"{owner} orthogonalises matrices and needs ndim >= 2. Send vectors, scalars, norms and "
                "biases to AdamW (nestlearn.optim.route_parameters does this)."
            )


def is_dtensor(tensor: object) -> bool:
    """Whether ``tensor`` is a DTensor (a parameter, gradient or state sharded by FSDP2)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.5, or a build without torch.distributed
        return False
    return isinstance(tensor, DTensor)


def _full(tensor: Tensor) -> Tensor:
    """The whole tensor of an FSDP2 DTensor (gathered from every rank); a plain tensor as it is."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def check_finite_gradients(owner: str, groups: list[dict[str, Any]]) -> None:
    """Raise :class:`NonFiniteGradientError` naming the first parameter whose gradient holds inf or NaN.

    One entry is enough to refuse: Newton–Schulz, a Frobenius norm or a running sum spreads it over
    the whole matrix and the optimiser state, so the step would turn every weight NaN for good. The
    check reads one flag per parameter and synchronises once: under FSDP2 each rank flags its own
    shards and one all-reduce combines the flags of every parameter.
    """
    pairs = [(group, p) for group in groups for p in group["params"] if p.grad is not None]
    if not pairs:
        return
    local = [p.grad.to_local() if is_dtensor(p.grad) else p.grad for _, p in pairs]
    flags = torch.stack([torch.isfinite(g).all().to(local[0].device) for g in local]).to(torch.int32)
    if any(is_dtensor(p.grad) for _, p in pairs):
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
    if bool(flags.all()):
        return
    group, param = pairs[int((flags == 0).nonzero()[0])]
    grad = _full(param.grad)
    n_nan, n_inf = int(grad.isnan().sum()), int(grad.isinf().sum())
    raise NonFiniteGradientError(
        f"{owner}: parameter {param_label(group, param)} has a non-finite gradient ({n_inf} inf and {n_nan} "
        f"NaN of {grad.numel()} entries); the step was refused and no parameter or state changed. Lower the "
        "learning rate, clip or check the loss, or skip this batch")


class PerParamOptimizer(Optimizer):
    """Base of the nestlearn optimisers: named parameters on every torch >= 2.4, and the step loop.

    ``params`` may hold ``(name, tensor)`` pairs, in groups or not, on every supported torch version
    (see :func:`split_param_names`); the names appear in error messages. Subclasses implement
    :meth:`update`, which :meth:`step` calls under ``no_grad`` for every parameter with a gradient.

    Non-finite gradients: before anything changes, :meth:`step` checks every gradient and raises
    :class:`~nestlearn.errors.NonFiniteGradientError` naming the first parameter with an inf or NaN
    entry (:func:`check_finite_gradients`); parameters and state are left as they were, so the
    caller may skip the batch and step again.
    """

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; subclasses check the new group (``self.param_groups[-1]``) afterwards."""
        super().add_param_group(split_param_names(param_group))

    def update(self, group: dict[str, Any], param: Tensor, state: dict[str, Any]) -> None:
        """Update ``param`` in place from ``param.grad``, the group's options and its ``state``."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Apply one update to every parameter with a gradient; returns the closure's loss if given."""
        loss = evaluate_closure(closure)
        check_finite_gradients(type(self).__name__, self.param_groups)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self.update(group, param, self.state[param])
        return loss
