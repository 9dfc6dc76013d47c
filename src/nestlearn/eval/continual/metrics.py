"""Continual-learning metrics over the accuracy matrix (tasks.md §9.1).

``R[i, j]`` is the score on task j after training on task i; ``b[j]`` the score on task j of the
model at initialisation. tasks.md writes the formulas 1-based; the code is 0-based, so its task T is
index ``T - 1`` here. Scores are "higher is better"; an LM stream uses ``s = -bpb``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from nestlearn.errors import ConfigError

ArrayLike = Sequence[Sequence[float]] | np.ndarray


def _matrix(R: ArrayLike, *, min_tasks: int = 1) -> np.ndarray:
    """``R`` as a (T, T) float64 array; ``ConfigError("R")`` unless square with T >= ``min_tasks``."""
    arr = np.asarray(R, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise ConfigError("R", f"must be a non-empty square T x T matrix, got shape {arr.shape}")
    if arr.shape[0] < min_tasks:
        raise ConfigError("R", f"needs T >= {min_tasks} tasks for this metric, got T = {arr.shape[0]}")
    return arr


def average_accuracy(R: ArrayLike) -> float:
    """ACC (GEM) = (1/T) Σ_j R[T, j]: the mean of the last row."""
    return float(_matrix(R)[-1].mean())


def backward_transfer(R: ArrayLike) -> float:
    """BWT (GEM) = 1/(T−1) Σ_{j<T} (R[T, j] − R[j, j]); negative means forgetting. Needs T >= 2."""
    arr = _matrix(R, min_tasks=2)
    T = arr.shape[0]
    return float((arr[-1, : T - 1] - np.diag(arr)[: T - 1]).mean())


def forward_transfer(R: ArrayLike, b: Sequence[float] | np.ndarray | None) -> float:
    """FWT (GEM) = 1/(T−1) Σ_{j>=2} (R[j−1, j] − b_j), with b the scores at initialisation.

    Uses the superdiagonal: task j's score just before it is trained. Needs T >= 2 and b of length T.
    Undefined in Class-IL with unseen classes masked; report "n/a" there instead of calling this.
    """
    arr = _matrix(R, min_tasks=2)
    T = arr.shape[0]
    if b is None:
        raise ConfigError("b", "forward transfer needs the scores at initialisation b (one per task)")
    base = np.asarray(b, dtype=np.float64)
    if base.shape != (T,):
        raise ConfigError("b", f"must have one score per task, shape ({T},), got {base.shape}")
    return float((np.diagonal(arr, offset=1) - base[1:]).mean())


def forgetting(R: ArrayLike, variant: str = "max_after") -> float:
    """F (Chaudhry et al. 2018): mean over j < T of f_j = max_l R[l, j] − R[T, j].

    Args:
        R: (T, T) score matrix, T >= 2.
        variant: ``"max_after"`` (project default, ``forgetting_max_after``): l ∈ [j, T−1], i.e. only
            once task j has been trained. ``"max_all"`` (Chaudhry's original): l ∈ [1, T−1]. They
            differ only when a task scores higher before its training than at any later point
            (tasks.md matrix E).
    """
    arr = _matrix(R, min_tasks=2)
    if variant not in ("max_after", "max_all"):
        raise ConfigError("variant", f"must be one of 'max_after', 'max_all', got {variant!r}")
    T = arr.shape[0]
    # The peak excludes the last row (l <= T−1), which is what f_j is compared against.
    history = arr[: T - 1, : T - 1]
    if variant == "max_after":
        rows = np.arange(T - 1)[:, None]
        history = np.where(rows >= np.arange(T - 1)[None, :], history, -np.inf)
    return float((history.max(axis=0) - arr[-1, : T - 1]).mean())


def first_minus_last_forgetting(R: ArrayLike) -> float:
    """Mean over j < T of (R[j, j] − R[T, j]) = −BWT; what some libraries call "forgetting"."""
    return -backward_transfer(R)


def average_incremental_accuracy(R: ArrayLike) -> float:
    """AIA (iCaRL) = (1/T) Σ_i (1/i) Σ_{j<=i} R[i, j]: the mean over stages of the seen-task average."""
    arr = _matrix(R)
    T = arr.shape[0]
    seen = np.tril(np.ones((T, T), dtype=bool))
    return float(((arr * seen).sum(axis=1) / np.arange(1, T + 1)).mean())


def continual_summary(R: ArrayLike, b: Sequence[float] | np.ndarray | None = None) -> dict[str, object]:
    """Every §9.1 metric, named as tasks.md asks, plus the full R and b for storage.

    Metrics needing T >= 2 are None for a single task; ``fwt`` is None ("n/a") without b.
    """
    arr = _matrix(R)
    multi = arr.shape[0] >= 2
    return {
        "acc": average_accuracy(arr),
        "bwt": backward_transfer(arr) if multi else None,
        "fwt": forward_transfer(arr, b) if multi and b is not None else None,
        "forgetting_max_after": forgetting(arr, "max_after") if multi else None,
        "forgetting_max_all": forgetting(arr, "max_all") if multi else None,
        "first_minus_last": first_minus_last_forgetting(arr) if multi else None,
        "aia": average_incremental_accuracy(arr),
        "R": arr.tolist(),
        "b": None if b is None else np.asarray(b, dtype=np.float64).tolist(),
    }


def run_protocol(train_on: Callable[[int], None], score_on: Callable[[int], float],
                 num_tasks: int) -> tuple[np.ndarray, np.ndarray]:
    """Fill R and b by the protocol of tasks.md §9: score every task at initialisation, then after each task.

    Args:
        train_on: trains the model on task i (0-based), in place.
        score_on: the current model's test score on task j ("higher is better").
        num_tasks: T >= 1.

    Returns:
        ``(R, b)``: R of shape (T, T) with ``R[i, j]`` the score on task j after training on task i;
        b of shape (T,), the scores before any training.
    """
    if num_tasks < 1:
        raise ConfigError("num_tasks", f"must be >= 1, got {num_tasks}")
    b = np.array([score_on(j) for j in range(num_tasks)], dtype=np.float64)
    R = np.empty((num_tasks, num_tasks), dtype=np.float64)
    for i in range(num_tasks):
        train_on(i)
        R[i] = [score_on(j) for j in range(num_tasks)]
    return R, b
