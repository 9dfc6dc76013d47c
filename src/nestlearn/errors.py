"""User-facing errors.

Everything a user can get wrong (a config value, a path, a checkpoint) raises a subclass of
:class:`NestlearnError`. The CLI prints such errors as one line and exits with status 2, without a
traceback; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any, Iterable


class NestlearnError(ValueError):
    """A user error: bad input, not a bug."""


class ConfigError(NestlearnError):
    """A configuration value is invalid.

    Args:
        field: dotted name of the offending field, e.g. ``"model.d_model"``.
        message: what is wrong and what is allowed.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class DataError(NestlearnError):
    """A data source is missing, empty or malformed."""


class CheckpointError(NestlearnError):
    """A checkpoint is missing, corrupt or does not match the requested model."""


class NonFiniteGradientError(NestlearnError):
    """An optimizer was asked to step with an inf or NaN gradient; nothing was changed."""


def check_positive(field: str, value: Any, *, allow_zero: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is > 0 (or >= 0 with ``allow_zero``)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(field, f"must be {bound}, got {value!r}")


def check_range(field: str, value: float, low: float, high: float, *, low_open: bool = False,
                high_open: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` lies in the interval [low, high] (ends optionally open)."""
    lo_ok = value > low if low_open else value >= low
    hi_ok = value < high if high_open else value <= high
    if not (lo_ok and hi_ok):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(field, f"must lie in {interval}, got {value!r}")


def check_choice(field: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        names = ", ".join(repr(a) for a in allowed)
        raise ConfigError(field, f"must be one of {names}, got {value!r}")
