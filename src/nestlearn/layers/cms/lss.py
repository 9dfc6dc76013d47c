"""The ``lss`` signal's read and write (Eq 9, Eq 71): a level records its reads until the model hands it u.

Driven by :mod:`nestlearn.models.lss`: inside a chunk an ``lss`` level only reads (with its
chunk-start weights) and appends an :class:`LSSRecord`; at the chunk's end the model computes
u = ∂L_c/∂y for every record and calls :func:`lss_write`, which runs the level's memory over the
chunk with value −u.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from nestlearn.layers.cms.level import State, Tensor
from nestlearn.memory import boundary_weights, memory_apply
from nestlearn.memory.step import memory_forward

if TYPE_CHECKING:
    from nestlearn.layers.cms.layer import CMS


class LSSRecord(NamedTuple):
    """What an ``lss`` level keeps of one read until its chunk's write (see :func:`lss_write`).

    x_norm: (B, n, d) the level's normalised input n(x), the memory's key; eta: (B, n) η_t; y:
    (B, n, d) the level's output, the tensor u = ∂L_c/∂y is taken with respect to.
    """

    x_norm: Tensor
    eta: Tensor
    y: Tensor


def lss_read(cms: CMS, i: int, x: Tensor, x_norm: Tensor, state: State, pos: int,
             tape: dict[int, list[LSSRecord]]) -> tuple[Tensor, State]:
    """An ``lss`` level inside one chunk: read with the chunk-start weights and record the read."""
    level = cms.levels[i]
    if pos % level.chunk_size + x.shape[1] > level.chunk_size:
        raise ValueError(f"CMS level {i}: positions {pos}..{pos + x.shape[1] - 1} cross a chunk end of "
                         f"C={level.chunk_size}; the lss driver must split the input at chunk ends")
    weights = boundary_weights(cms.memory_state(state, f"{i}.", level.spec), pos, level.chunk_size,
                               level.spec.weight_names)
    y = x + memory_apply(level.spec, weights, x_norm)
    if not y.requires_grad:  # u = ∂L_c/∂y needs y in a graph even when nothing upstream is trained
        y.requires_grad_(True)
    tape.setdefault(i, []).append(LSSRecord(x_norm, level.eta_of(x), y))
    return y, {k: v for k, v in state.items() if k.split(".", 1)[0] == str(i)}


def lss_write(cms: CMS, i: int, state: State, records: list[LSSRecord], us: list[Tensor], end: int) -> State:
    """Level i's write at the end of its chunk (absolute position ``end``), Eq 71 with the ``lss`` signal.

    θ ← θ − Σ_t η_t ∇_θ ⟨F_θ(x_t), u_t⟩ over the chunk's reads ``records`` with values ``us``
    (one (B, n, d) tensor per record, detached), at the chunk-start weights the reads used: the
    level's memory run over the chunk with key n(x) and value −u, without reads. Nested variant:
    the same values write the fast initial state, which replaces the level at a boundary of the
    slower level (Eq 72). Returns level i's new state entries.
    """
    level = cms.levels[i]
    x_norm, eta = (torch.cat(t, dim=1) for t in zip(*((r.x_norm, r.eta) for r in records)))
    value = -torch.cat(us, dim=1)
    start = end - x_norm.shape[1]
    mem = cms.memory_state(state, f"{i}.", level.spec)
    _, mem = memory_forward(level.spec, mem, x_norm, x_norm, value, eta, pos=start, outputs=False, tag=f"cms{i}")
    out = {}
    if cms.nested(i):
        init_spec = cms.init_spec(i)
        _, init = memory_forward(init_spec, cms.memory_state(state, f"{i}.init.", init_spec), x_norm, x_norm, value,
                                 eta, pos=start, outputs=False, tag=f"cms{i}.init")
        if end % init_spec.chunk_size == 0:
            mem = dict(init)
        out.update({f"{i}.init.{n}": t for n, t in init.items()})
    out.update({f"{i}.{n}": t for n, t in mem.items()})
    return out
