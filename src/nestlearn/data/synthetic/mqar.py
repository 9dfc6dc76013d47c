"""MQAR: multi-query associative recall (Arora et al. 2023, Zoology; tasks.md §1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nestlearn.data.synthetic.base import (
    IGNORE_INDEX,
    TaskBatch,
    check_int,
    make_rng,
    sample_distinct,
)
from nestlearn.errors import ConfigError


@dataclass(frozen=True)
class MQARTier:
    """Sizes of one MQAR tier. ``train``/``test`` list (seq_len, num_pairs, count) settings."""

    vocab_size: int
    train: tuple[tuple[int, int, int], ...]
    test: tuple[tuple[int, int, int], ...]
    train_batch_size: int
    test_batch_size: int


MQAR_TIERS: dict[str, MQARTier] = {
    # Zoology Fig. 2: each (L, D) trained and tested on its own; batch 512 at L = 64 down to 128 at 512.
    "paper": MQARTier(
        vocab_size=8192,
        train=((64, 4, 100_000), (128, 8, 100_000), (256, 16, 100_000), (512, 64, 100_000)),
        test=((64, 4, 3_000), (128, 8, 3_000), (256, 16, 3_000), (512, 64, 3_000)),
        train_batch_size=512, test_batch_size=512),
    # Based / Zoology's current default: one training mixture, tested on longer and denser settings.
    "based": MQARTier(
        vocab_size=8192,
        train=((64, 4, 100_000), (128, 8, 20_000), (256, 16, 20_000), (256, 32, 20_000), (256, 64, 20_000)),
        test=((64, 4, 1_000), (64, 8, 1_000), (64, 16, 1_000), (128, 32, 1_000), (256, 64, 1_000),
              (512, 128, 1_000), (1024, 256, 1_000)),
        train_batch_size=256, test_batch_size=32),
    "cpu": MQARTier(
        vocab_size=8192,
        train=((64, 4, 20_000), (128, 8, 20_000), (256, 16, 20_000)),
        test=((64, 4, 1_000), (128, 8, 1_000), (256, 16, 1_000)),
        train_batch_size=64, test_batch_size=256),
}


def mqar(n: int, seed: int, *, seq_len: int = 64, num_pairs: int = 4, vocab_size: int = 8192,
         power_a: float = 0.01, random_non_queries: bool = True) -> TaskBatch:
    """Generate n MQAR sequences (tasks.md §1).

    Layout of a row: the context ``k1 v1 … kD vD`` (2D tokens), then a query region of L − 2D tokens
    where key k_i sits at offset 2·g_i, with distinct gaps g_i drawn with P(g) ∝ a·(g+1)^(a−1).
    Keys come from [1, V/2), values from [V/2, V), each without replacement within a row. As in
    Zoology, the token after a query is filler, not its value: the answer never enters the input,
    so a later query cannot be answered from an earlier query's echo.

    Args:
        n: number of sequences.
        seed: seed of the generator's own RNG.
        seq_len: L, even; requires 4·D <= L < V.
        num_pairs: D key–value pairs.
        vocab_size: V.
        power_a: a in the gap law; small a makes short gaps dominate.
        random_non_queries: replace the remaining zeros of the inputs by uniform tokens in [0, V)
            (Zoology Fig. 2 uses False).

    Returns:
        TaskBatch with inputs/targets (n, L); the target at a queried key's position is its value.
        ``meta``: ``num_pairs``, ``seq_len``, ``keys`` (n, D), ``values`` (n, D),
        ``query_positions`` (n, D) (input positions of the queried keys, in context order).
    """
    n = check_int("n", n, 1)
    L = check_int("seq_len", seq_len, 2)
    D = check_int("num_pairs", num_pairs, 1)
    V = check_int("vocab_size", vocab_size, 4)
    if L % 2:
        raise ConfigError("seq_len", f"must be even, got {L}")
    if not V > L:
        raise ConfigError("vocab_size", f"must exceed seq_len (V > L), got vocab_size={V}, seq_len={L}")
    if 4 * D > L:
        raise ConfigError("num_pairs", f"needs 4·num_pairs <= seq_len, got num_pairs={D}, seq_len={L}")
    if not power_a > 0:
        raise ConfigError("power_a", f"must be > 0, got {power_a}")
    rng = make_rng(seed)
    half = V // 2  # 4·D <= L < V keeps D below the V/2 − 1 keys available
    keys = sample_distinct(rng, n, D, 1, half)
    values = sample_distinct(rng, n, D, half, V)

    # Distinct weighted gaps without replacement via Gumbel top-k: the same law as drawing one gap at
    # a time with probabilities renormalised over the gaps not yet taken.
    n_gaps = (L - 2 * D) // 2
    g = np.arange(n_gaps)
    log_p = np.log(power_a) + (power_a - 1.0) * np.log(g + 1.0)
    scores = log_p[None, :] + rng.gumbel(size=(n, n_gaps))
    gaps = np.argsort(-scores, axis=1)[:, :D]

    seq = np.zeros((n, L + 1), dtype=np.int64)
    seq[:, 0:2 * D:2] = keys
    seq[:, 1:2 * D:2] = values
    rows = np.arange(n)[:, None]
    query_pos = 2 * D + 2 * gaps
    seq[rows, query_pos] = keys
    inputs = seq[:, :-1].copy()
    targets = np.full((n, L), IGNORE_INDEX, dtype=np.int64)
    targets[rows, query_pos] = values
    if random_non_queries:
        zeros = inputs == 0
        inputs[zeros] = rng.integers(0, V, size=int(zeros.sum()))
    return TaskBatch(
        inputs=torch.from_numpy(inputs), targets=torch.from_numpy(targets), vocab_size=V, num_classes=V,
        meta={"num_pairs": D, "seq_len": L, "keys": torch.from_numpy(keys), "values": torch.from_numpy(values),
              "query_positions": torch.from_numpy(query_pos)})
