"""Chomsky-hierarchy transduction tasks (Delétang et al. 2023; tasks.md §5).

Every row of a batch has the same input length, as in the original protocol, where each training
step draws one length; a length sweep is a loop over calls. The model reads the input tokens, then
``output_length`` blank tokens, and is scored at the blanks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from nestlearn.data.synthetic.base import IGNORE_INDEX, TaskBatch, check_int, make_rng
from nestlearn.errors import check_choice

# Token codes of modular_arithmetic: numbers 0–4 are themselves; the operators follow.
PLUS, MINUS, TIMES = 5, 6, 7
# Token codes of stack_manipulation: stack bits 0/1, then the operations; 2 is also the output terminator.
POP, PUSH0, PUSH1 = 2, 3, 4
MODULUS = 5


@dataclass(frozen=True)
class _Spec:
    in_size: int
    out_size: int
    out_len: Callable[[int], int]
    sample: Callable[[np.random.Generator, int, int], np.ndarray]
    solve: Callable[[np.ndarray], np.ndarray]


def _binary(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    return rng.integers(0, 2, size=(n, length))


def _cycle_sample(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    return rng.integers(0, 3, size=(n, length))


def _arith_sample(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    x = rng.integers(0, MODULUS, size=(n, length))
    x[:, 1::2] = rng.integers(PLUS, TIMES + 1, size=(n, length // 2))
    return x


def _stack_sample(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    # [project] The initial stack takes a uniform share s ∈ [0, length] of the input, the operations the rest.
    stack_len = rng.integers(0, length + 1, size=(n, 1))
    bits = rng.integers(0, 2, size=(n, length))
    ops = rng.integers(POP, PUSH1 + 1, size=(n, length))
    return np.where(np.arange(length)[None, :] < stack_len, bits, ops)


def _arith_solve(x: np.ndarray) -> np.ndarray:
    # Left to right with a pending product term, so × binds tighter than + and −.
    total = np.zeros(len(x), dtype=np.int64)
    term = x[:, 0].copy()
    sign = np.ones(len(x), dtype=np.int64)
    for t in range(1, x.shape[1], 2):
        op, num = x[:, t], x[:, t + 1]
        times = op == TIMES
        total = np.where(times, total, total + sign * term)
        sign = np.where(times, sign, np.where(op == PLUS, 1, -1))
        term = np.where(times, term * num % MODULUS, num)
    return ((total + sign * term) % MODULUS)[:, None]


def _stack_solve(x: np.ndarray) -> np.ndarray:
    n, length = x.shape
    rows = np.arange(n)
    stack = np.zeros((n, length), dtype=np.int64)
    height = np.zeros(n, dtype=np.int64)
    for t in range(length):
        tok = x[:, t]
        push = tok != POP
        stack[rows[push], height[push]] = np.where(tok >= PUSH0, tok - PUSH0, tok)[push]
        height = np.where(push, height + 1, np.maximum(height - 1, 0))  # [project] POP on empty: no-op
    j = np.arange(length + 1)[None, :]
    top_down = stack[rows[:, None], np.clip(height[:, None] - 1 - j, 0, None)]
    return np.where(j < height[:, None], top_down, POP)


SPECS: dict[str, _Spec] = {
    "parity_check": _Spec(2, 2, lambda L: 1, _binary, lambda x: (x.sum(1) % 2)[:, None]),
    "even_pairs": _Spec(2, 2, lambda L: 1, _binary, lambda x: (x[:, :1] != x[:, -1:]).astype(np.int64)),
    "cycle_navigation": _Spec(3, 5, lambda L: 1, _cycle_sample, lambda x: ((x - 1).sum(1) % MODULUS)[:, None]),
    "modular_arithmetic": _Spec(TIMES + 1, MODULUS, lambda L: 1, _arith_sample, _arith_solve),
    "reverse_string": _Spec(2, 2, lambda L: L, _binary, lambda x: x[:, ::-1]),
    "stack_manipulation": _Spec(PUSH1 + 1, 3, lambda L: L + 1, _stack_sample, _stack_solve),
    "duplicate_string": _Spec(2, 2, lambda L: 2 * L, _binary, lambda x: np.concatenate([x, x], axis=1)),
}
CHOMSKY_TASKS = tuple(SPECS)


@dataclass(frozen=True)
class ChomskyTier:
    """Sizes of one Chomsky tier: input lengths are inclusive ranges."""

    tasks: tuple[str, ...]
    train_lengths: tuple[int, int]
    test_lengths: tuple[int, int]
    steps: int | tuple[int, int]
    batch_size: int


CHOMSKY_TIERS: dict[str, ChomskyTier] = {
    # [verify] about 1M steps, several seeds and learning rates, maximum reported.
    "paper": ChomskyTier(tasks=CHOMSKY_TASKS, train_lengths=(1, 40), test_lengths=(41, 500), steps=1_000_000,
                         batch_size=128),
    "cpu": ChomskyTier(tasks=("parity_check", "modular_arithmetic", "cycle_navigation", "reverse_string",
                              "stack_manipulation", "duplicate_string"),
                       train_lengths=(1, 40), test_lengths=(41, 256), steps=(2_000, 5_000), batch_size=128),
}


def chomsky_task(n: int, seed: int, *, task: str = "parity_check", length: int = 10) -> TaskBatch:
    """Generate n rows of one Chomsky transduction task at one input length (tasks.md §5).

    Encodings (input ids, then the blank = ``in_size``):
      - parity_check, even_pairs, reverse_string, duplicate_string: bits 0/1.
      - cycle_navigation: actions 0/1/2 meaning −1/0/+1; the label is Σ(a − 1) mod 5.
      - modular_arithmetic: numbers 0–4 at even positions, operators + − × as 5, 6, 7 at odd
        positions; the value mod 5 with × binding tighter. The length must be odd: an even
        ``length`` is rounded down, so a sweep over 1 … 40 stays valid.
      - stack_manipulation: the initial stack bottom → top as bits 0/1, then POP, PUSH 0, PUSH 1 as
        2, 3, 4; output the final stack top → bottom, then 2, padded with 2 up to length + 1
        [project: the padding is scored as class 2; POP on an empty stack does nothing].

    Args:
        n: number of rows.
        seed: seed of the generator's own RNG.
        task: one of :data:`CHOMSKY_TASKS`.
        length: input length (before blanks), >= 1.

    Returns:
        TaskBatch with inputs/targets (n, length + output_length); targets are -100 on the input part.
        ``meta``: ``task``, ``length``, ``output_length``, ``blank_id``.
    """
    check_choice("task", task, CHOMSKY_TASKS)
    n = check_int("n", n, 1)
    length = check_int("length", length, 1)
    if task == "modular_arithmetic":
        length -= 1 - length % 2
    spec = SPECS[task]
    rng = make_rng(seed)
    x = spec.sample(rng, n, length)
    y = spec.solve(x)
    out_len = spec.out_len(length)
    blank = spec.in_size
    inputs = np.concatenate([x, np.full((n, out_len), blank, dtype=np.int64)], axis=1)
    targets = np.concatenate([np.full((n, length), IGNORE_INDEX, dtype=np.int64), y], axis=1)
    return TaskBatch(inputs=torch.from_numpy(inputs), targets=torch.from_numpy(np.ascontiguousarray(targets)),
                     vocab_size=spec.in_size + 1, num_classes=spec.out_size,
                     meta={"task": task, "length": length, "output_length": out_len, "blank_id": blank})
