"""Newton–Schulz orthogonalisation (Muon's quintic iteration).

In the associative-memory reading of NL-L §4 (spec §2.3, Eqs 42–44) the Newton–Schulz iterations
are a *higher-frequency level*: a small inner optimiser that, for every incoming momentum matrix,
learns the map to the nearest (semi-)orthogonal matrix by a few steps on an orthogonality
objective ‖OᵀO − I‖². Eq 44's single step recovers a cubic polynomial; the project uses Muon's
quintic polynomial instead (decisions.md D20), which pushes the singular values into roughly
[0.7, 1.2] in five steps without ever forming an SVD.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nestlearn.errors import ConfigError

NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
"""Muon's quintic coefficients (a, b, c), D20."""

NS_STEPS: int = 5
"""Default number of Newton–Schulz iterations, D20."""

CUBIC_COEFFICIENTS: tuple[float, float, float] = (1.5, -0.5, 0.0)
"""The classical cubic Newton–Schulz iteration X ← 1.5X − 0.5XXᵀX (the polynomial of Eq 44)."""


def validate_ns_args(steps: int, coefficients: tuple[float, ...], owner: str = "newton_schulz") -> None:
    """Raise :class:`ConfigError` unless ``steps`` is a non-negative int and ``coefficients`` has three finite numbers."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"{owner}.ns_steps", f"must be an integer >= 0, got {steps!r}")
    coeffs = tuple(coefficients)
    if len(coeffs) != 3 or not all(isinstance(c, (int, float)) and c == c and abs(c) != float("inf")
                                   for c in coeffs):
        raise ConfigError(f"{owner}.ns_coefficients",
                          f"must be three finite numbers (a, b, c), got {coefficients!r}")


def newton_schulz(
    matrix: Tensor,
    steps: int = NS_STEPS,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
    compute_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Approximately orthogonalise ``matrix`` (the U Vᵀ factor of its SVD) by Newton–Schulz iterations.

    Each step applies X ← aX + (bA + cA²)X with A = XXᵀ (D20). The input is first divided by its
    Frobenius norm (+ ``eps``) so that every singular value is at most 1, where the polynomial
    converges. When the matrix has more rows than columns it is transposed so that A is the smaller
    Gram matrix. Computation runs in ``compute_dtype`` (float32 by default; bfloat16 is an option on
    GPUs) and the result is returned in the input's dtype.

    Args:
        matrix: a tensor with at least 2 dimensions; leading dimensions are treated as a batch and
            every trailing (rows, cols) matrix is orthogonalised independently.
        steps: number of iterations (T in Algorithm 1 of NL-L §7.2).
        coefficients: (a, b, c) of the quintic; :data:`CUBIC_COEFFICIENTS` gives the cubic.
        eps: added to the Frobenius norm, so a zero matrix maps to zero instead of NaN.
        compute_dtype: dtype of the iteration.

    Returns:
        A tensor of the same shape and dtype as ``matrix``.
    """
    if matrix.ndim < 2:
        raise ValueError(f"newton_schulz needs a tensor with at least 2 dimensions, got shape {tuple(matrix.shape)}")
    a, b, c = coefficients
    x = matrix.to(compute_dtype)
    transposed = x.size(-2) > x.size(-1)
    if transposed:
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    if transposed:
        x = x.mT
    return x.to(matrix.dtype)
