"""MQAR (tasks.md §1): answers recoverable from the context, layout, gap law, errors, determinism."""

import numpy as np
import pytest
import torch

from nestlearn.data.synthetic import mqar
from nestlearn.errors import ConfigError


def test_every_label_is_the_value_bound_to_its_key_in_the_context():
    V, L, D = 512, 128, 8
    batch = mqar(64, seed=3, seq_len=L, num_pairs=D, vocab_size=V)
    assert batch.inputs.shape == batch.targets.shape == (64, L)
    for row_in, row_tg in zip(batch.inputs.tolist(), batch.targets.tolist()):
        context = row_in[: 2 * D]
        table = dict(zip(context[0::2], context[1::2]))
        assert len(table) == D  # keys distinct
        assert all(1 <= k < V // 2 for k in table) and all(V // 2 <= v < V for v in table.values())
        assert len(set(table.values())) == D
        labelled = [(t, y) for t, y in enumerate(row_tg) if y != -100]
        assert len(labelled) == D
        assert sorted(row_in[t] for t, _ in labelled) == sorted(table)  # every key queried once
        for t, y in labelled:
            assert t >= 2 * D and (t - 2 * D) % 2 == 0
            assert table[row_in[t]] == y


def test_zero_filler_without_random_non_queries_and_no_value_after_a_query():
    D, L = 4, 64
    batch = mqar(16, seed=0, seq_len=L, num_pairs=D, vocab_size=256, random_non_queries=False)
    query = batch.inputs[:, 2 * D:]
    labelled = batch.targets[:, 2 * D:] != -100
    # Zoology's layout: the query region holds the queried keys and zeros only, so no value (upper
    # half of the vocabulary) appears after the context.
    assert (query[~labelled] == 0).all() and (query[labelled] > 0).all()
    assert (query < 128).all()


def test_short_gaps_dominate_with_small_power():
    D, L = 4, 256
    batch = mqar(2000, seed=1, seq_len=L, num_pairs=D, vocab_size=1024)
    gaps = (batch.meta["query_positions"] - 2 * D) // 2
    assert gaps.min() >= 0 and gaps.max() < (L - 2 * D) // 2
    # P(g) ∝ (g+1)^-0.99 over 124 gaps: gap 0 is far more frequent than gap 100.
    counts = np.bincount(gaps.flatten().numpy(), minlength=(L - 2 * D) // 2)
    assert counts[0] > 5 * max(counts[100], 1)


def test_dense_setting_uses_distinct_keys():
    batch = mqar(20, seed=2, seq_len=1024, num_pairs=256, vocab_size=8192)
    keys = batch.meta["keys"]
    assert all(len(set(row.tolist())) == 256 for row in keys)


def test_same_seed_same_batch_and_different_seed_differs():
    a, b, c = (mqar(8, seed=s, seq_len=64, num_pairs=4, vocab_size=512) for s in (5, 5, 6))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


@pytest.mark.parametrize("kwargs, field", [
    ({"seq_len": 64, "num_pairs": 4, "vocab_size": 64}, "vocab_size"),
    ({"seq_len": 64, "num_pairs": 17, "vocab_size": 512}, "num_pairs"),
    ({"seq_len": 63, "num_pairs": 4, "vocab_size": 512}, "seq_len"),
    ({"seq_len": 64, "num_pairs": 4, "vocab_size": 512, "power_a": 0.0}, "power_a"),
])
def test_bad_arguments_name_the_parameter(kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        mqar(2, seed=0, **kwargs)
    with pytest.raises(ConfigError, match="^seed:"):
        mqar(2, seed=-1)
