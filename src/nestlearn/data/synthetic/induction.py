"""Induction heads (Olsson et al. 2022; the H3/Hyena/Mamba synthetic; tasks.md §7)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nestlearn.data.synthetic.base import IGNORE_INDEX, TaskBatch, check_int, make_rng
from nestlearn.errors import check_choice


@dataclass(frozen=True)
class InductionTier:
    """Sizes of one induction-heads tier; lengths are ``input_seq_len``."""

    vocab_size: int
    train_len: int
    test_lens: tuple[int, ...]
    batch_size: int | None


INDUCTION_TIERS: dict[str, InductionTier] = {
    "paper": InductionTier(vocab_size=20, train_len=30, test_lens=(30,), batch_size=32),  # H3/Hyena defaults
    "mamba": InductionTier(vocab_size=16, train_len=256, test_lens=tuple(2 ** k for k in range(6, 21)),
                           batch_size=None),
    "cpu": InductionTier(vocab_size=16, train_len=256, test_lens=(256, 1024, 4096, 16384), batch_size=32),
}


def induction_heads(n: int, seed: int, *, seq_len: int = 256, vocab_size: int = 16, num_triggers: int = 3,
                    induction_len: int = 1, labels: str = "all") -> TaskBatch:
    """Generate n induction-heads sequences (tasks.md §7).

    The two specials are the trigger ``=>`` (id V − 1) and a padding id V − 2 that this generator
    never emits but reserves, so batches of different lengths can share one vocabulary; ordinary
    tokens are [0, V − 2). With probability 1/2 a row has a single trigger, otherwise
    ``num_triggers`` drawn positions; a trigger overlapping the previous drawn one is dropped. Each
    trigger is followed by the row's ``induction_len`` copy tokens, and the row ends with ``=>`` and
    the copy tokens again.

    Args:
        n: number of sequences.
        seed: seed of the generator's own RNG.
        seq_len: ``input_seq_len``, the random part; the full sequence has seq_len + 1 + induction_len
            tokens and inputs/targets are it shifted by one.
        vocab_size: V, both specials included; >= 4.
        num_triggers: triggers in the rows that do not force a single one [project: default 3].
        induction_len: tokens copied after each trigger.
        labels: ``"all"`` (training: next-token loss everywhere) or ``"final"`` (testing: only the
            copy tokens after the final trigger are scored).

    Returns:
        TaskBatch with inputs/targets (n, seq_len + induction_len). ``meta``: ``copy_tokens``
        (n, induction_len), ``trigger_id``, ``final_mask`` (n, T) bool of the test positions.
    """
    n = check_int("n", n, 1)
    V = check_int("vocab_size", vocab_size, 4)
    k = check_int("induction_len", induction_len, 1)
    L = check_int("seq_len", seq_len, k + 2)
    num_triggers = check_int("num_triggers", num_triggers, 1)
    check_choice("labels", labels, ("all", "final"))
    rng = make_rng(seed)
    trigger = V - 1
    seq = rng.integers(0, V - 2, size=(n, L + 1 + k))
    copy = rng.integers(0, V - 2, size=(n, k))

    pos = np.sort(rng.integers(0, L - k - 1, size=(n, num_triggers)), axis=1)
    keep = np.ones_like(pos, dtype=bool)
    keep[:, 1:] = np.diff(pos, axis=1) > k
    single = rng.random(n) < 0.5
    keep[single, 1:] = False
    rows, cols = np.nonzero(keep)
    starts = pos[rows, cols]
    seq[rows, starts] = trigger
    for offset in range(k):
        seq[rows, starts + 1 + offset] = copy[rows, offset]
    seq[:, L] = trigger
    seq[:, L + 1:] = copy

    inputs, targets = seq[:, :-1], seq[:, 1:].copy()
    final_mask = np.zeros_like(targets, dtype=bool)
    final_mask[:, L:] = True
    if labels == "final":
        targets[~final_mask] = IGNORE_INDEX
    return TaskBatch(inputs=torch.from_numpy(np.ascontiguousarray(inputs)), targets=torch.from_numpy(targets),
                     vocab_size=V, num_classes=V,
                     meta={"copy_tokens": torch.from_numpy(copy), "trigger_id": trigger,
                           "final_mask": torch.from_numpy(final_mask)})
