"""Chomsky transduction tasks (tasks.md §5) against per-row reference solvers written here."""

from itertools import pairwise

import pytest
import torch

from nestlearn.data.synthetic import TASKS, chomsky_task
from nestlearn.data.synthetic.chomsky import CHOMSKY_TASKS
from nestlearn.errors import ConfigError


def _modular(tokens):
    text = "".join(str(t) if t < 5 else {5: "+", 6: "-", 7: "*"}[t] for t in tokens)
    return [eval(text) % 5]  # Python's precedence is the task's: × before + and −


def _stack(tokens):
    stack = []
    for t in tokens:
        if t in (0, 1):
            stack.append(t)
        elif t == 2:
            if stack:
                stack.pop()
        else:
            stack.append(t - 3)
    out = stack[::-1] + [2]
    return out + [2] * (len(tokens) + 1 - len(out))


REFERENCE = {
    "parity_check": lambda x: [sum(x) % 2],
    "even_pairs": lambda x: [sum(a != b for a, b in pairwise(x)) % 2],
    "cycle_navigation": lambda x: [sum({0: -1, 1: 0, 2: 1}[a] for a in x) % 5],
    "modular_arithmetic": _modular,
    "reverse_string": lambda x: x[::-1],
    "stack_manipulation": _stack,
    "duplicate_string": lambda x: x + x,
}
IN_SIZE = {"parity_check": 2, "even_pairs": 2, "cycle_navigation": 3, "modular_arithmetic": 8,
           "reverse_string": 2, "stack_manipulation": 5, "duplicate_string": 2}
OUT_SIZE = {"parity_check": 2, "even_pairs": 2, "cycle_navigation": 5, "modular_arithmetic": 5,
            "reverse_string": 2, "stack_manipulation": 3, "duplicate_string": 2}


@pytest.mark.parametrize("task", CHOMSKY_TASKS)
@pytest.mark.parametrize("length", [1, 2, 9, 41])
def test_outputs_match_the_reference(task, length):
    batch = chomsky_task(64, seed=length, task=task, length=length)
    n_in = batch.meta["length"]
    out_len = batch.meta["output_length"]
    assert batch.inputs.shape == (64, n_in + out_len) and batch.targets.shape == batch.inputs.shape
    assert batch.vocab_size == IN_SIZE[task] + 1 and batch.num_classes == OUT_SIZE[task]
    assert (batch.inputs[:, n_in:] == batch.meta["blank_id"]).all()
    assert (batch.inputs[:, :n_in] < IN_SIZE[task]).all() and (batch.inputs >= 0).all()
    assert (batch.targets[:, :n_in] == -100).all()
    for x, y in zip(batch.inputs[:, :n_in].tolist(), batch.targets[:, n_in:].tolist()):
        assert y == REFERENCE[task](x)


def test_modular_arithmetic_has_odd_length_and_alternates_numbers_and_operators():
    batch = chomsky_task(32, seed=0, task="modular_arithmetic", length=10)
    assert batch.meta["length"] == 9
    x = batch.inputs[:, :9]
    assert (x[:, 0::2] < 5).all() and (x[:, 1::2] >= 5).all() and (x[:, 1::2] <= 7).all()


def test_stack_manipulation_mixes_stack_and_operations():
    batch = chomsky_task(256, seed=1, task="stack_manipulation", length=20)
    x = batch.inputs[:, :20]
    assert (x == 2).any() and (x == 3).any() and (x == 4).any() and (x <= 1).any()


def test_determinism_registry_and_errors():
    for task in CHOMSKY_TASKS:
        a, b = TASKS[task](16, 3, length=12), TASKS[task](16, 3, length=12)
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
        assert not torch.equal(a.inputs, TASKS[task](16, 4, length=12).inputs)
    with pytest.raises(ConfigError, match="^task:"):
        chomsky_task(2, seed=0, task="bucket_sort")
    with pytest.raises(ConfigError, match="^length:"):
        chomsky_task(2, seed=0, length=0)
