"""Selective copying (Gu & Dao 2023, Mamba; tasks.md §6)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nestlearn.data.synthetic.base import IGNORE_INDEX, TaskBatch, check_int, make_rng


@dataclass(frozen=True)
class CopyingTier:
    """Sizes of one selective-copying tier; lengths are total input lengths L + 2M."""

    vocab_size: int
    num_tokens: int
    train_len: int
    test_lens: tuple[int, ...]
    batch_size: int
    steps: int | None


COPYING_TIERS: dict[str, CopyingTier] = {
    "paper": CopyingTier(vocab_size=16, num_tokens=16, train_len=4096, test_lens=(4096,), batch_size=64,
                         steps=400_000),
    "cpu": CopyingTier(vocab_size=16, num_tokens=16, train_len=256, test_lens=(256, 1024), batch_size=64,
                       steps=None),
}


def selective_copying(n: int, seed: int, *, seq_len: int = 256, vocab_size: int = 16, num_tokens: int = 16,
                      selective: bool = True) -> TaskBatch:
    """Generate n selective-copying sequences (tasks.md §6).

    Token 0 is the blank, ``vocab_size − 1`` the marker, data tokens are uniform in [1, A − 2]. The
    M data tokens sit, in order, at M sorted random slots among the first L + M positions (the first
    M slots when ``selective=False``), followed by M markers.

    Args:
        n: number of sequences.
        seed: seed of the generator's own RNG.
        seq_len: total input length L + 2M (L blanks, M data tokens, M markers); >= 2M.
        vocab_size: A, blank and marker included; >= 3.
        num_tokens: M tokens to copy.
        selective: False gives the non-selective ablation.

    Returns:
        TaskBatch (n, seq_len); the targets are the data tokens, in order, at the M marker positions.
        ``meta``: ``data`` (n, M), ``positions`` (n, M) of the data tokens.
    """
    n = check_int("n", n, 1)
    A = check_int("vocab_size", vocab_size, 3)
    M = check_int("num_tokens", num_tokens, 1)
    T = check_int("seq_len", seq_len, 2 * M)
    rng = make_rng(seed)
    data = rng.integers(1, A - 1, size=(n, M))
    slots = T - M
    if selective:
        positions = np.sort(np.argsort(rng.random((n, slots)), axis=1)[:, :M], axis=1)
    else:
        positions = np.broadcast_to(np.arange(M), (n, M)).copy()
    inputs = np.zeros((n, T), dtype=np.int64)
    inputs[np.arange(n)[:, None], positions] = data
    inputs[:, slots:] = A - 1
    targets = np.full((n, T), IGNORE_INDEX, dtype=np.int64)
    targets[:, slots:] = data
    return TaskBatch(inputs=torch.from_numpy(inputs), targets=torch.from_numpy(targets), vocab_size=A,
                     num_classes=A, meta={"data": torch.from_numpy(data), "positions": torch.from_numpy(positions)})
