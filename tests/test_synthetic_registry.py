"""Every registered task: uniform batch contract, seeding, tiers; and the shared scoring helpers."""

import pytest
import torch

from nestlearn.data.synthetic import (
    TASKS,
    TIERS,
    TaskBatch,
    derive_seed,
    generate,
    mqar,
)
from nestlearn.errors import ConfigError
from nestlearn.eval.metrics import (
    ranking_accuracy,
    sequence_accuracy,
    string_match_all,
    token_accuracy,
)


def _small(name):
    if name == "mqar":
        return {"seq_len": 64, "num_pairs": 4, "vocab_size": 256}
    if name in ("selective_copying", "induction_heads"):
        return {"seq_len": 64}
    if name.startswith("formal_"):
        return {"train_lengths": (1, 12)}
    if "niah" in name:
        return {"seq_len": 1024}
    if name.startswith("babi_"):
        return {"seq_len": 0}
    if name.startswith("mad_"):
        return {}  # MAD's baseline settings are small
    return {"length": 8}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_batch_contract_and_seeding(name):
    a = generate(name, 6, 1, **_small(name))
    b = TASKS[name](6, 1, **_small(name))
    c = TASKS[name](6, 2, **_small(name))
    assert isinstance(a, TaskBatch)
    assert a.inputs.dtype == a.targets.dtype == torch.int64
    assert a.inputs.dim() == 2 and a.inputs.shape == a.targets.shape and a.inputs.shape[0] == 6
    assert a.inputs.min() >= 0 and a.inputs.max() < a.vocab_size
    labelled = a.targets[a.label_mask]
    assert a.label_mask.any(dim=1).all()
    if a.target_sets is None:
        assert labelled.min() >= 0 and labelled.max() < a.num_classes
    else:
        assert a.target_sets.shape == (*a.inputs.shape, a.num_classes)
        assert labelled.max() < 2 ** a.num_classes
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not (a.inputs.shape == c.inputs.shape and torch.equal(a.inputs, c.inputs))
    assert {"paper", "cpu"} <= set(TIERS[name])


def test_unknown_task_names_the_choices():
    with pytest.raises(ConfigError, match="^task:.*mqar"):
        generate("assoc_recall", 1, 0)


def test_token_and_sequence_accuracy_use_labelled_positions_only():
    targets = torch.tensor([[-100, 1, 2], [-100, -100, 3], [-100, -100, -100]])
    preds = torch.tensor([[9, 1, 0], [9, 9, 3], [0, 0, 0]])
    assert token_accuracy(preds, targets) == pytest.approx(2 / 3)
    assert sequence_accuracy(preds, targets) == pytest.approx(1 / 2)
    with pytest.raises(ConfigError, match="^predictions:"):
        token_accuracy(preds[:, :2], targets)
    assert torch.isnan(torch.tensor(token_accuracy(preds, torch.full_like(targets, -100))))


def test_ranking_counts_ties_as_wrong_and_accepts_gold_indices():
    loglik = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -5.0], [-4.0, -0.5, -3.0]])
    assert ranking_accuracy(loglik) == pytest.approx(1 / 3)
    assert ranking_accuracy(loglik, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    assert ranking_accuracy(torch.zeros(4, 10)) == 0.0
    with pytest.raises(ConfigError, match="^gold_index:"):
        ranking_accuracy(loglik, torch.tensor([0, 1]))


def test_string_match_all_is_ruler_percent():
    assert string_match_all(["The values are ABC and def"], [["abc", "DEF", "ghi"]]) == pytest.approx(200 / 3)
    with pytest.raises(ConfigError, match="^predictions:"):
        string_match_all(["a"], [["a"], ["b"]])


def test_derived_seed_streams_are_stable_and_disjoint():
    train, test = derive_seed(0, "train"), derive_seed(0, "test")
    assert train == derive_seed(0, "train") and train != test and derive_seed(1, "train") != train
    assert 0 <= train < 2 ** 63
    a, b = mqar(4, derive_seed(0, "train")), mqar(4, derive_seed(0, "test"))
    assert not torch.equal(a.inputs, b.inputs)
    with pytest.raises(ConfigError, match="^seed:"):
        derive_seed(-3, "train")
