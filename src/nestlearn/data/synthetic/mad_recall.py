"""MAD's in-context recall tasks: plain, noisy and fuzzy (Poli et al. 2024; tasks.md §8).

All three are MAD's multi-query form (its baseline setting): every key that recurs is a query, and
the sequence ends with one more query. MAD trains these tasks with the next-token loss on every
position and scores only the queried values; ``training=True`` gives the former targets, the
default the latter. The layouts follow the public mad-lab generators; the differences are in
tasks.md §8.
"""

from __future__ import annotations

import numpy as np
import torch

from nestlearn.data.synthetic.base import IGNORE_INDEX, TaskBatch, check_int, make_rng
from nestlearn.errors import ConfigError


def _shifted(seq: np.ndarray, scored: np.ndarray, vocab_size: int, training: bool) -> TaskBatch:
    """Inputs seq[:, :-1]; targets the next token everywhere (training) or only where ``scored`` holds one."""
    targets = seq[:, 1:] if training else scored[:, 1:]
    return TaskBatch(inputs=torch.from_numpy(np.ascontiguousarray(seq[:, :-1])),
                     targets=torch.from_numpy(np.ascontiguousarray(targets)), vocab_size=vocab_size,
                     num_classes=vocab_size)


def mad_recall(n: int, seed: int, *, vocab_size: int = 16, seq_len: int = 128, noise_vocab_size: int = 0,
               frac_noise: float = 0.0, training: bool = False) -> TaskBatch:
    """Generate n in-context recall sequences (noisy recall with ``frac_noise > 0``).

    Vocabulary: with S = V − noise_vocab_size, keys are [0, S/2), values [S/2, S), noise tokens
    [S, V). A row is L/2 − 1 two-token slots, each a key–value pair from the row's own random map
    (a value drawn per key, so two keys may share a value) or, with probability ``frac_noise``, two
    noise tokens (one random slot is always a pair); then a final query: a key shown earlier and its
    value. A pair whose key was shown before is a query.

    Args:
        seq_len: L, even; rows are L − 1 tokens long (the last token only serves as a target).
        training: targets are the next token at every position (MAD's training loss).

    Returns:
        TaskBatch (n, L − 1); the target at a queried key is its value (test form).
    """
    n = check_int("n", n, 1)
    V = check_int("vocab_size", vocab_size, 4)
    L = check_int("seq_len", seq_len, 4)
    noise_v = check_int("noise_vocab_size", noise_vocab_size, 0, V - 4)
    if L % 2:
        raise ConfigError("seq_len", f"must be even, got {L}")
    if not 0.0 <= frac_noise < 1.0:
        raise ConfigError("frac_noise", f"must lie in [0, 1), got {frac_noise}")
    if frac_noise > 0 and noise_v == 0:
        raise ConfigError("noise_vocab_size", "must be > 0 when frac_noise > 0")
    S = V - noise_v
    nk = S // 2
    slots = L // 2 - 1
    rng = make_rng(seed)
    rows = np.arange(n)[:, None]
    table = rng.integers(nk, S, size=(n, nk))
    keys = rng.integers(0, nk, size=(n, slots))
    values = table[rows, keys]
    noise = rng.random((n, slots)) < frac_noise
    noise[np.arange(n), rng.integers(0, slots, size=n)] = False
    shown = np.zeros((n, slots, nk), dtype=bool)
    shown[rows, np.arange(slots), keys] = ~noise
    before = np.cumsum(shown, axis=1) - shown  # pairs with each key strictly before each slot
    repeat = (before[rows, np.arange(slots), keys] > 0) & ~noise
    probe = np.argmax(np.where(shown.any(axis=1), rng.random((n, nk)), -1.0), axis=1)

    seq = np.empty((n, L), dtype=np.int64)
    noise_tokens = rng.integers(S, V, size=(n, slots, 2)) if noise_v else np.zeros((n, slots, 2), dtype=np.int64)
    seq[:, 0:2 * slots:2] = np.where(noise, noise_tokens[..., 0], keys)
    seq[:, 1:2 * slots:2] = np.where(noise, noise_tokens[..., 1], values)
    seq[:, -2] = probe
    seq[:, -1] = table[np.arange(n), probe]
    scored = np.full((n, L), IGNORE_INDEX, dtype=np.int64)
    scored[:, 1:2 * slots:2] = np.where(repeat, values, IGNORE_INDEX)
    scored[:, -1] = seq[:, -1]
    return _shifted(seq, scored, V, training)


def _fuzzy_row(rng: np.random.Generator, L: int, nk: int, nv: int, K: int, Kv: int,
               training: bool) -> tuple[list[int], list[int]]:
    """One fuzzy-recall row before padding: (tokens, scored targets), both unshifted, length <= L."""
    key_sizes = np.arange(1, K + 1) if training else np.array([K])

    def motif(size: int, pool: int, offset: int) -> tuple[int, ...]:
        return tuple(int(t) + offset for t in rng.choice(pool, size, replace=False))

    probe_k = motif(int(rng.choice(key_sizes)), nk, 0)
    probe_v = motif(int(rng.integers(1, Kv + 1)), nv, nk)
    probe_len = len(probe_k) + len(probe_v)
    # [project] MAD draws the probe's slot up to L − 2·|probe|, so that it can (rarely) miss the loop and
    # be queried without being shown; this bound always shows it first.
    probe_at = int(rng.integers(0, L - probe_len - 2 * (K + Kv) + 1))
    table = {probe_k: probe_v}
    tokens: list[int] = []
    scored: list[int] = []
    probe_shown = False
    while len(tokens) < L - probe_len - (K + Kv):
        if not probe_shown and len(tokens) >= probe_at:
            key, seen = probe_k, False
        else:
            key = motif(int(rng.choice(key_sizes)), nk, 0)
            seen = key in table and (key != probe_k or probe_shown)
            if key not in table:
                table[key] = motif(int(rng.integers(1, Kv + 1)), nv, nk)
        probe_shown |= key == probe_k
        value = table[key]
        tokens += [*key, *value]
        scored += [IGNORE_INDEX] * len(key) + (list(value) if seen else [IGNORE_INDEX] * len(value))
    tokens += [*probe_k, *probe_v]
    scored += [IGNORE_INDEX] * len(probe_k) + list(probe_v)
    return tokens, scored


def mad_fuzzy_recall(n: int, seed: int, *, vocab_size: int = 16, seq_len: int = 128, key_motif: int = 3,
                     value_motif: int = 3, training: bool = False) -> TaskBatch:
    """Generate n fuzzy in-context recall sequences: keys and values are motifs of several tokens.

    Vocabulary: V − 1 is the pad token; keys are made of distinct tokens from [0, K₀), K₀ = (V − 1) // 2,
    values of distinct tokens from [K₀, V − 1). A key has 1 … ``key_motif`` tokens in training and
    exactly ``key_motif`` otherwise (MAD queries at the longest key); a value 1 … ``value_motif``.
    Pairs follow the row's own random map until the row is nearly full, with one probe pair placed
    at a random point; the row ends with the probe again and is left-padded to L + 1 tokens. Every
    token of a recurring key's value is a target.

    Returns:
        TaskBatch (n, L): left-padded rows; targets as :func:`mad_recall`'s.
    """
    n = check_int("n", n, 1)
    V = check_int("vocab_size", vocab_size, 5)
    K = check_int("key_motif", key_motif, 1)
    Kv = check_int("value_motif", value_motif, 1)
    L = check_int("seq_len", seq_len, 3 * (K + Kv))
    nk = (V - 1) // 2
    nv = V - 1 - nk
    if K > nk or Kv > nv:
        raise ConfigError("vocab_size", f"too small for motifs of {K} distinct key and {Kv} distinct value tokens, got {V}")
    rng = make_rng(seed)
    seq = np.full((n, L + 1), V - 1, dtype=np.int64)
    scored = np.full((n, L + 1), IGNORE_INDEX, dtype=np.int64)
    for i in range(n):
        tokens, targets = _fuzzy_row(rng, L, nk, nv, K, Kv, training)
        seq[i, L + 1 - len(tokens):] = tokens
        scored[i, L + 1 - len(targets):] = targets
    return _shifted(seq, scored, V, training)
