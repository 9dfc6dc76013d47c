"""MAD's compression, memorization and selective-copying tasks (Poli et al. 2024; tasks.md §8).

The vocabulary layouts, lengths and counts follow the public mad-lab task definitions (checked
against its task configs; the differences are listed in tasks.md §8). The three recall tasks are in
:mod:`nestlearn.data.synthetic.mad_recall`. ``MAD_TIERS["paper"]`` holds MAD's baseline setting of
every task (generator parameters, training and test counts), ``MAD_TIERS["cpu"]`` the same data
with the smaller test set the suite scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nestlearn.data.synthetic.base import IGNORE_INDEX, TaskBatch, check_int, make_rng
from nestlearn.errors import ConfigError


@dataclass(frozen=True)
class MADSetting:
    """One MAD task setting: the generator's parameters and the sizes of the fixed data sets."""

    params: dict[str, Any] = field(default_factory=dict)
    train_count: int = 12_800
    test_count: int = 1_280


# mad-lab configs/tasks/*.yml "baseline" entries (multi_query=True for the three recall tasks).
MAD_BASELINES: dict[str, MADSetting] = {
    "mad_compression": MADSetting({"vocab_size": 16, "seq_len": 32}),
    "mad_recall": MADSetting({"vocab_size": 16, "seq_len": 128}),
    "mad_noisy_recall": MADSetting({"vocab_size": 32, "seq_len": 128, "noise_vocab_size": 16, "frac_noise": 0.2}),
    "mad_fuzzy_recall": MADSetting({"vocab_size": 16, "seq_len": 128, "key_motif": 3, "value_motif": 3}),
    "mad_selective_copying": MADSetting({"vocab_size": 16, "seq_len": 256, "num_tokens": 16}),
    "mad_memorization": MADSetting({"vocab_size": 256, "seq_len": 32}, train_count=256),
}
MAD_TIERS: dict[str, dict[str, MADSetting]] = {
    name: {"paper": s, "cpu": MADSetting(s.params, s.train_count, 256)} for name, s in MAD_BASELINES.items()
}


def _batch(inputs: np.ndarray, targets: np.ndarray, vocab_size: int, **meta: Any) -> TaskBatch:
    return TaskBatch(inputs=torch.from_numpy(np.ascontiguousarray(inputs)),
                     targets=torch.from_numpy(np.ascontiguousarray(targets)),
                     vocab_size=vocab_size, num_classes=vocab_size, meta=meta)


def mad_compression(n: int, seed: int, *, vocab_size: int = 16, seq_len: int = 32) -> TaskBatch:
    """Generate n compression sequences: seq_len − 1 uniform tokens from [0, V − 1), then the token V − 1.

    The model may not read the targets position by position: MAD scores this task with an
    auto-encoder whose decoder sees only the encoder's state at the last (compression) token
    (:mod:`nestlearn.eval.compression`); ``meta["reconstruct"]`` tells the task loop to build one.

    Returns:
        TaskBatch (n, seq_len); the target at every position is the input token there (MAD scores
        the compression token too).
    """
    n = check_int("n", n, 1)
    V = check_int("vocab_size", vocab_size, 3)
    L = check_int("seq_len", seq_len, 2)
    rng = make_rng(seed)
    inputs = np.concatenate([rng.integers(0, V - 1, size=(n, L - 1)), np.full((n, 1), V - 1)], axis=1)
    return _batch(inputs, inputs.copy(), V, reconstruct=True)


def memorization_map(vocab_size: int, map_seed: int) -> np.ndarray:
    """The fixed key → value table of the memorization task: (K,) int64, value of key k at index k.

    Keys are [0, K) and values [K, V − 1) with K = (V − 1) // 2 (V − 1 is the insert token); each key
    gets a distinct value, at random under ``map_seed`` alone, so every sample and split share it.
    """
    keys = (vocab_size - 1) // 2
    rng = make_rng(map_seed)
    return rng.permutation(np.arange(keys, vocab_size - 1))[:keys]


def mad_memorization(n: int, seed: int, *, vocab_size: int = 256, seq_len: int = 32,
                     map_seed: int = 12345) -> TaskBatch:
    """Generate n memorization sequences: seq_len / 2 pairs (key, insert token) over a fixed map.

    Nothing in the context tells the value; the model must store the map (:func:`memorization_map`)
    in its weights. ``map_seed`` defaults to mad-lab's config seed.

    Returns:
        TaskBatch (n, seq_len); the target at each insert token is the preceding key's value.
        ``meta["map"]``: the (K,) key → value table.
    """
    n = check_int("n", n, 1)
    V = check_int("vocab_size", vocab_size, 5)
    L = check_int("seq_len", seq_len, 2)
    if L % 2:
        raise ConfigError("seq_len", f"must be even, got {L}")
    table = memorization_map(V, map_seed)
    rng = make_rng(seed)
    keys = rng.integers(0, len(table), size=(n, L // 2))
    inputs = np.full((n, L), V - 1, dtype=np.int64)
    inputs[:, 0::2] = keys
    targets = np.full((n, L), IGNORE_INDEX, dtype=np.int64)
    targets[:, 1::2] = table[keys]
    return _batch(inputs, targets, V, map=torch.from_numpy(table))


def mad_selective_copying(n: int, seed: int, *, vocab_size: int = 16, seq_len: int = 256,
                          num_tokens: int = 16) -> TaskBatch:
    """Generate n sequences of MAD's selective copying (differs from Mamba's, tasks.md §6).

    Layout: the M data tokens (uniform in [0, V − 2)) in order, with L − 2M − 1 blanks (V − 2) spread
    over the M gaps *before* each data token (a multinomial count per gap, as inserting each blank at
    a uniform data index does), then the copy token V − 1, then M blanks.

    Returns:
        TaskBatch (n, seq_len); targets are the data tokens, in order, at the last M positions.
        ``meta``: ``data`` (n, M), ``positions`` (n, M) of the data tokens.
    """
    n = check_int("n", n, 1)
    V = check_int("vocab_size", vocab_size, 3)
    M = check_int("num_tokens", num_tokens, 1)
    L = check_int("seq_len", seq_len, 2 * M + 2)
    rng = make_rng(seed)
    data = rng.integers(0, V - 2, size=(n, M))
    gaps = rng.multinomial(L - 2 * M - 1, np.full(M, 1.0 / M), size=n)
    positions = np.cumsum(gaps, axis=1) + np.arange(M)
    inputs = np.full((n, L), V - 2, dtype=np.int64)
    inputs[np.arange(n)[:, None], positions] = data
    inputs[:, L - M - 1] = V - 1
    targets = np.full((n, L), IGNORE_INDEX, dtype=np.int64)
    targets[:, L - M:] = data
    return _batch(inputs, targets, V, data=torch.from_numpy(data), positions=torch.from_numpy(positions))
