"""Helpers shared by the optimisers: hyper-parameter checks, parameter labels, matrix views."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from nestlearn.errors import ConfigError, check_positive, check_range


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


def param_label(group: dict[str, Any], index: int, param: Tensor) -> str:
    """A human-readable name for ``group["params"][index]``: its name when the group has names."""
    names = group.get("param_names")
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
    for index, param in enumerate(group["params"]):
        if param.ndim < 2:
            raise ValueError(
                f"{owner}: parameter {param_label(group, index, param)} has shape {tuple(param.shape)}; "
                f"{owner} orthogonalises matrices and needs ndim >= 2. Send vectors, scalars, norms and "
                "biases to AdamW (nestlearn.optim.route_parameters does this)."
            )
