"""Selective copying (tasks.md §6) and induction heads (tasks.md §7) against direct references."""

import pytest
import torch

from nestlearn.data.synthetic import induction_heads, selective_copying
from nestlearn.errors import ConfigError


def test_selective_copying_targets_are_the_data_tokens_in_order():
    A, M, T = 10, 5, 40
    batch = selective_copying(32, seed=0, seq_len=T, vocab_size=A, num_tokens=M)
    assert batch.inputs.shape == (32, T)
    for row_in, row_tg in zip(batch.inputs.tolist(), batch.targets.tolist()):
        body, markers = row_in[: T - M], row_in[T - M:]
        assert markers == [A - 1] * M
        data = [x for x in body if x != 0]
        assert len(data) == M and all(1 <= x <= A - 2 for x in data)
        assert row_tg[: T - M] == [-100] * (T - M)
        assert row_tg[T - M:] == data


def test_non_selective_copying_puts_the_data_first():
    batch = selective_copying(8, seed=1, seq_len=30, vocab_size=8, num_tokens=4, selective=False)
    assert (batch.inputs[:, :4] >= 1).all() and (batch.inputs[:, 4:26] == 0).all()
    assert torch.equal(batch.targets[:, 26:], batch.inputs[:, :4])


def test_selective_copying_positions_vary_and_seed_is_reproducible():
    a, b, c = (selective_copying(16, seed=s, seq_len=64) for s in (2, 2, 3))
    assert torch.equal(a.inputs, b.inputs) and not torch.equal(a.inputs, c.inputs)
    assert len({tuple(p) for p in a.meta["positions"].tolist()}) > 1
    with pytest.raises(ConfigError, match="^seq_len:"):
        selective_copying(2, seed=0, seq_len=31, num_tokens=16)
    with pytest.raises(ConfigError, match="^vocab_size:"):
        selective_copying(2, seed=0, vocab_size=2)


def test_induction_heads_every_trigger_is_followed_by_the_copy_token():
    V, L = 12, 40
    batch = induction_heads(200, seed=0, seq_len=L, vocab_size=V, num_triggers=3)
    trigger = V - 1
    assert batch.inputs.shape == batch.targets.shape == (200, L + 1)
    n_triggers = []
    for row_in, row_tg in zip(batch.inputs.tolist(), batch.targets.tolist()):
        full = row_in + [row_tg[-1]]
        assert row_tg == full[1:]  # next-token labels everywhere
        assert max(x for x in full if x != trigger) < V - 2  # the reserved pad id never appears
        where = [t for t, x in enumerate(full) if x == trigger]
        assert where[-1] == L
        followers = {full[t + 1] for t in where}
        assert len(followers) == 1  # one copy token per row, after every trigger
        n_triggers.append(len(where) - 1)
    assert min(n_triggers) == 1 and max(n_triggers) == 3


def test_induction_heads_final_labels_score_only_the_answer():
    batch = induction_heads(16, seed=4, seq_len=30, vocab_size=20, labels="final")
    scored = batch.targets != -100
    assert scored.sum(1).tolist() == [1] * 16 and scored[:, -1].all()
    assert (batch.inputs[:, -1] == 19).all()
    first_trigger = (batch.inputs == 19).int().argmax(1)
    assert torch.equal(batch.targets[:, -1], batch.inputs[torch.arange(16), first_trigger + 1])
    a, b = induction_heads(4, seed=7, seq_len=30), induction_heads(4, seed=7, seq_len=30)
    assert torch.equal(a.inputs, b.inputs) and not torch.equal(a.inputs, induction_heads(4, seed=8, seq_len=30).inputs)
    with pytest.raises(ConfigError, match="^labels:"):
        induction_heads(2, seed=0, labels="last")
