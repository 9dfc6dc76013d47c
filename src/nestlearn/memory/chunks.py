"""Chunks aligned to absolute positions, and cutting a call's tensors into them (spec §5.5, D4)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensor = torch.Tensor
State = dict[str, Tensor]


def chunk_bounds(pos: int, length: int, chunk_size: int) -> list[tuple[int, int]]:
    """[start, end) token ranges of the chunks of a call covering absolute positions pos..pos+length−1.

    The first range ends at the next multiple of C, so a stream cut anywhere yields the same chunks.
    """
    bounds, start = [], 0
    while start < length:
        end = min(length, start + chunk_size - (pos + start) % chunk_size)
        bounds.append((start, end))
        start = end
    return bounds


def split_chunks(bounds: list[tuple[int, int]], tensors: Sequence[Tensor | None], dim: int) -> list[tuple[Tensor, ...] | None]:
    """Each tensor cut along ``dim`` into the chunks of ``bounds`` (:func:`chunk_bounds`); None stays None.

    One split rather than a slice per chunk: the backward of a split concatenates, where a slice's
    backward fills a zero tensor of the whole sequence for every chunk (quadratic in its length).
    """
    sizes = [end - start for start, end in bounds]
    return [None if t is None else t.split(sizes, dim=dim) for t in tensors]


def boundary_weights(state: State, pos: int, chunk_size: int, names: Sequence[str]) -> State:
    """The weights ``names`` at the last chunk boundary b(t) for a token at absolute position ``pos``
    (D4): the state's weights themselves when ``pos`` opens a chunk, else their ``*_b`` copies."""
    at_boundary = pos % chunk_size == 0
    return {n: state[n] if at_boundary else state[f"{n}_b"] for n in names}
