"""The ``lss`` signal's read and write (Eq 9, Eq 71): a level records its reads until the model hands it u.

Driven by :mod:`nestlearn.models.lss`: inside a chunk an ``lss`` level only reads (with its
chunk-start weights) and appends an :class:`LSSRecord`; at the chunk's end the model computes
u = ∂L_c/∂y for every record and calls :func:`lss_write`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from nestlearn.layers.cms.chunk import (
    State,
    Tensor,
    accumulate,
    hidden_activations,
    minus,
    pack_weights,
    subtract,
    unpack_weights,
    write_factors,
)

if TYPE_CHECKING:
    from nestlearn.layers.cms.layer import CMS


class LSSRecord(NamedTuple):
    """What an ``lss`` level keeps of one read until its chunk's write (see :func:`lss_write`).

    x_norm: (B, n, d) the level's normalised input n(x); eta: (B, n, 1) η_t; y: (B, n, d) the
    level's output, the tensor u = ∂L_c/∂y is taken with respect to; pre: (B, n, h_in) the read's
    input product n(x) W_inᵀ at the chunk-start weights, which the write reuses.
    """

    x_norm: Tensor
    eta: Tensor
    y: Tensor
    pre: Tensor


def lss_read(cms: CMS, i: int, x: Tensor, x_norm: Tensor, state: State, pos: int,
             tape: dict[int, list[LSSRecord]]) -> tuple[Tensor, State]:
    """An ``lss`` level inside one chunk: read with the current weights and record the read."""
    level = cms.levels[i]
    if pos % level.chunk_size + x.shape[1] > level.chunk_size:
        raise ValueError(f"CMS level {i}: positions {pos}..{pos + x.shape[1] - 1} cross a chunk end of "
                         f"C={level.chunk_size}; the lss driver must split the input at chunk ends")
    w = pack_weights(level.form, {n: state[f"{i}.{n}"] for n in level.initial})
    eta = level.eta_of(x).unsqueeze(-1)
    terms = level.terms(w, x_norm, x_norm, x_norm, eta, write=False)
    y = x + terms.out
    if not y.requires_grad:  # u = ∂L_c/∂y needs y in a graph even when nothing upstream is trained
        y.requires_grad_(True)
    tape.setdefault(i, []).append(LSSRecord(x_norm, eta, y, terms.pre))
    return y, {k: v for k, v in state.items() if k.split(".", 1)[0] == str(i)}


def lss_write(cms: CMS, i: int, state: State, records: list[LSSRecord], us: list[Tensor], end: int) -> State:
    """Level i's write at the end of its chunk (absolute position ``end``), Eq 71 with the ``lss`` signal.

    θ ← θ − Σ_t η_t ∇_θ ⟨F_θ(x_t), u_t⟩ over the chunk's reads ``records`` with values ``us``
    (one (B, n, d) tensor per record, detached), at the chunk-start weights in ``state`` — the
    weights the reads used, so their input products are reused; all records are one write.
    Nested variant: the same values write the fast initial state, which replaces the level at a
    boundary of the slower level (Eq 72). Returns level i's new state entries.
    """
    level = cms.levels[i]
    names = list(level.initial)
    batch, form, act = us[0].shape[0], level.form, level.spec.activation
    w = pack_weights(form, {n: state[f"{i}.{n}"] for n in names})
    x_norm, eta, pre = (torch.cat(t, dim=1) for t in zip(*((r.x_norm, r.eta, r.pre) for r in records)))
    target = -torch.cat(us, dim=1)
    w = subtract(w, write_factors(form, act, "dot", w, x_norm, pre, hidden_activations(form, act, pre), None, target,
                                  eta, level.step))
    out = {f"{i}.G{n[1:]}": state[f"{i}.G{n[1:]}"] for n in names}
    if cms.cfg.variant == "nested" and i > 0:
        init = pack_weights(form, {n: state[f"{i}.I{n[1:]}"] for n in names})
        h = pack_weights(form, {n: state[f"{i}.H{n[1:]}"] for n in names})
        h = accumulate(h, level.terms(init, x_norm, x_norm, target, eta, read=False).factors)
        if end % cms.cfg.chunk_sizes[i - 1] == 0:
            init, h = minus(init, h), None
            w = dict(init)
        full_i = unpack_weights(form, init, batch)
        full_h = unpack_weights(form, h, batch) if h is not None else None
        for n in names:
            j = n[1:]
            out[f"{i}.I{j}"] = full_i[n]
            out[f"{i}.H{j}"] = full_h[n] if full_h is not None else torch.zeros_like(state[f"{i}.H{j}"])
    full = unpack_weights(form, w, batch)
    out.update({f"{i}.{n}": full[n] for n in names})
    return out
