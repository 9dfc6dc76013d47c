"""Fast-weight monitor: the largest fast-weight norm of every memory, and where a read first became non-finite.

Inside ``with watch() as m:`` every :func:`~nestlearn.memory.memory_scan` (and every CMS level) reports
after each chunk: ``m.max_norm["layer1.mem.W1"]`` is the largest Frobenius norm that weight reached
over the batch, the heads and the chunks, and ``m.first_nonfinite`` names the first memory, in call
order, whose reads or weights stopped being finite, with the token range of that chunk (inside a
chunk the fast path cannot say which token: a non-finite value reaches every read of its chunk). Outside a
``watch`` nothing is recorded and nothing is synchronised. Names are ``<scope>.<tag>.<weight>``:
:class:`~nestlearn.models.lm.CausalLM` opens the scope ``layer<i>`` around block i, and each layer
tags its memories (design.md, S6).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

_ACTIVE: contextvars.ContextVar[Monitor | None] = contextvars.ContextVar("nestlearn_monitor", default=None)
_SCOPE: contextvars.ContextVar[str] = contextvars.ContextVar("nestlearn_monitor_scope", default="")


@dataclass
class NonFinite:
    """Where a memory first produced a non-finite read or weight: its name and absolute tokens [start, end)."""

    name: str
    start: int
    end: int

    def __str__(self) -> str:
        where = f"token {self.start}" if self.end - self.start <= 1 else f"tokens {self.start}–{self.end - 1}"
        return f"{self.name} at {where}"


@dataclass
class Monitor:
    """Records of one ``watch``: ``max_norm`` (name -> largest ‖W‖_F) and ``first_nonfinite``."""

    max_norm: dict[str, float] = field(default_factory=dict)
    first_nonfinite: NonFinite | None = None

    def observe(self, tag: str, pos: int, weights: dict[str, torch.Tensor], out: torch.Tensor | None,
                length: int | None = None) -> None:
        """One chunk of memory ``tag`` starting at absolute position ``pos``: its weights after the
        chunk (any leading axes, matrices last; may be empty), its reads (..., n, d) or None, and
        its length n when there are no reads."""
        scope = _SCOPE.get()
        name = f"{scope}.{tag}" if scope else tag
        n = out.shape[-2] if out is not None else length
        # Chunk granularity: inside a chunk a non-finite value reaches every read of the chunk through
        # its matrix products, so the chunk is the finest place the fast path can name.
        bad = out is not None and not bool(torch.isfinite(out.detach()).all())
        for key, w in weights.items():
            norm = float(w.detach().flatten(-2).norm(dim=-1).max())
            full = f"{name}.{key}"
            if not math.isfinite(norm):
                norm, bad = math.inf, True
            self.max_norm[full] = max(self.max_norm.get(full, 0.0), norm)
        if bad and self.first_nonfinite is None:
            self.first_nonfinite = NonFinite(name, pos, pos + (n or 1))

    def largest(self) -> dict[str, float]:
        """The records, by name."""
        return dict(sorted(self.max_norm.items()))


def active() -> Monitor | None:
    """The monitor of the innermost ``watch``, or None."""
    return _ACTIVE.get()


@contextlib.contextmanager
def watch() -> Iterator[Monitor]:
    """Record fast-weight norms and the first non-finite memory inside the block."""
    mon = Monitor()
    token = _ACTIVE.set(mon)
    try:
        yield mon
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def scope(name: str) -> Iterator[None]:
    """Prefix the names recorded inside the block with ``name`` (nested scopes join with dots)."""
    outer = _SCOPE.get()
    token = _SCOPE.set(f"{outer}.{name}" if outer else name)
    try:
        yield
    finally:
        _SCOPE.reset(token)
