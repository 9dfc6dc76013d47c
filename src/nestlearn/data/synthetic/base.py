"""The batch type every task returns, and the seeded sampling helpers the generators share (tasks.md §0)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nestlearn.errors import ConfigError

IGNORE_INDEX = -100


@dataclass
class TaskBatch:
    """One batch of a task, in the form a single next-token-style loop can train and score.

    The model reads ``inputs`` and its prediction at position t is compared with ``targets[:, t]``
    wherever that is not -100. The target at t is what the model must emit after reading
    ``inputs[:, : t + 1]``.

    Attributes:
        inputs: (B, T) int64 token ids in ``[0, vocab_size)``.
        targets: (B, T) int64 class ids in ``[0, num_classes)``, -100 where not scored.
        vocab_size: number of input token ids.
        num_classes: number of target classes (the output head's width).
        meta: task-specific extras (answers, depths, seeds, ...), documented by each generator.
        target_sets: (B, T, K) bool multi-label targets, only for tasks scored by a set per position
            (formal languages: K independent sigmoids); ``targets`` then holds the set's bit code.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    vocab_size: int
    num_classes: int
    meta: dict[str, Any] = field(default_factory=dict)
    target_sets: torch.Tensor | None = None

    @property
    def label_mask(self) -> torch.Tensor:
        """(B, T) bool: the scored positions."""
        return self.targets != IGNORE_INDEX


def set_codes(sets: torch.Tensor) -> torch.Tensor:
    """(..., K) bool sets -> (...) int64 codes Σ_k 2^k·[k ∈ set], so equal sets have equal codes."""
    weights = 2 ** torch.arange(sets.shape[-1], device=sets.device)
    return (sets.long() * weights).sum(-1)


def make_rng(seed: int) -> np.random.Generator:
    """The generator's own ``numpy.random.Generator``; ``ConfigError("seed")`` unless a non-negative int."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError("seed", f"must be a non-negative int, got {seed!r}")
    return np.random.default_rng(int(seed))


def derive_seed(seed: int, stream: str) -> int:
    """A seed for a named stream ("train", "test", ...) of ``seed``, so that splits use disjoint seed streams.

    Derived by hashing, so no small offset of one stream's seed collides with another's.
    """
    make_rng(seed)
    digest = hashlib.sha256(f"{int(seed)}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def check_int(field_name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high]; ``ConfigError(field_name)`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(field_name, f"must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(field_name, f"must be {bound}, got {value}")
    return int(value)


def sample_distinct(rng: np.random.Generator, n: int, k: int, low: int, high: int) -> np.ndarray:
    """Per row, k distinct integers from [low, high), uniformly, in random order.

    Rejection (draw with replacement, redraw rows with a duplicate) is cheap while duplicates are rare;
    when they are likely, a row-wise random permutation is used instead, in chunks to bound memory.

    Returns:
        (n, k) int64.
    """
    pool = high - low
    if k > pool:
        raise ConfigError("k", f"cannot draw {k} distinct values from a pool of {pool}")
    out = np.empty((n, k), dtype=np.int64)
    if k * (k - 1) <= pool:  # expected duplicate pairs <= 1/2: a few rounds of redraws suffice
        todo = np.arange(n)
        while todo.size:
            draw = rng.integers(low, high, size=(todo.size, k))
            srt = np.sort(draw, axis=1)
            ok = ~(srt[:, 1:] == srt[:, :-1]).any(axis=1)
            out[todo[ok]] = draw[ok]
            todo = todo[~ok]
        return out
    chunk = max(1, 4_000_000 // pool)
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        out[start:start + rows] = np.argsort(rng.random((rows, pool)), axis=1)[:, :k] + low
    return out


def pad_left(rows: list[np.ndarray], pad_id: int, width: int | None = None) -> np.ndarray:
    """Left-pad 1-D int arrays to a common width (the longest, or ``width``) so their ends align.

    Returns:
        (len(rows), width) int64.
    """
    width = max(len(r) for r in rows) if width is None else width
    out = np.full((len(rows), width), pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        if len(r):
            out[i, width - len(r):] = r
    return out


def continuation_batch(items: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], pad_id: int,
                       vocab_size: int) -> TaskBatch:
    """Rows that score candidate continuations, for ranking metrics (tasks.md §2.2, §3.2).

    Row (i, j) is ``prefix + continuation`` of ``items[i][j]``, left-padded; only the continuation
    is labelled (next-token style), so a model's summed log-likelihood over a row's labelled
    positions (:func:`nestlearn.eval.metrics.continuation_logliks`) is the candidate's score.

    Args:
        items: per sample, a list of (prefix ids, continuation ids) pairs, one per candidate.
        pad_id: id used for left padding.
        vocab_size: the task's vocabulary size.

    Returns:
        TaskBatch with one row per candidate, in sample-major order. ``meta["groups"]`` (B, C_max)
        int64 holds each sample's row indices, -1 where a sample has fewer candidates; turn row
        scores into (B, C_max) with :func:`nestlearn.eval.metrics.group_scores`.
    """
    rows: list[np.ndarray] = []
    scored: list[int] = []
    groups = np.full((len(items), max(len(c) for c in items)), -1, dtype=np.int64)
    for i, cands in enumerate(items):
        for j, (prefix, cont) in enumerate(cands):
            groups[i, j] = len(rows)
            rows.append(np.concatenate([prefix, cont]).astype(np.int64))
            scored.append(len(cont))
    seq = pad_left(rows, pad_id)
    width = seq.shape[1] - 1
    targets = seq[:, 1:].copy()
    targets[np.arange(width)[None, :] < (width - np.array(scored))[:, None]] = IGNORE_INDEX
    return TaskBatch(inputs=torch.from_numpy(np.ascontiguousarray(seq[:, :-1])), targets=torch.from_numpy(targets),
                     vocab_size=vocab_size, num_classes=vocab_size, meta={"groups": torch.from_numpy(groups)})


def verbatim_overlap(train: torch.Tensor, test: torch.Tensor, pad_id: int | None = None) -> int:
    """How many test rows occur verbatim among the training rows (tasks.md §0, finite-support tasks).

    Args:
        train: (N, T1) token ids.
        test: (M, T2) token ids.
        pad_id: padding id stripped from the right of every row before comparing, so rows padded
            to different widths still compare by content.
    """
    def keys(x: torch.Tensor) -> list[bytes]:
        out = []
        for row in x.cpu().numpy().astype(np.int64):
            if pad_id is not None:
                keep = np.nonzero(row != pad_id)[0]
                row = row[: keep[-1] + 1] if keep.size else row[:0]
            out.append(row.tobytes())
        return out

    seen = set(keys(train))
    return sum(k in seen for k in keys(test))
