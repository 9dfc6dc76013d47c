"""Formal-language recognition as next-character-set prediction (NL Table 5; tasks.md §4).

After each prefix of a string of the language, the model predicts for every symbol of Σ ∪ {EOS}
whether it may legally come next (|Σ| + 1 independent sigmoids). A string counts as correct only
when the predicted set equals the true set at every position, the empty prefix and the full string
included. Score with :func:`nestlearn.eval.metrics.recognition_accuracy`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nestlearn.data.synthetic.base import (
    IGNORE_INDEX,
    TaskBatch,
    check_int,
    make_rng,
    set_codes,
)
from nestlearn.errors import ConfigError, check_choice

ALPHABETS: dict[str, str] = {
    "parity": "01",
    "aa_star": "a",
    "abab_star": "ab",
    "anbn": "ab",
    "anbncn": "abc",
    "shuffle2": "()[]",
}
LANGUAGES = tuple(ALPHABETS)
# Lengths a member can have: parity any; (aa)*, aⁿbⁿ and Shuffle-2 even; (abab)* multiples of 4; aⁿbⁿcⁿ of 3.
_LENGTH_MODULUS = {"parity": 1, "aa_star": 2, "abab_star": 4, "anbn": 2, "anbncn": 3, "shuffle2": 2}
SPLITS = ("train", "bin0", "bin1")


@dataclass(frozen=True)
class FormalTier:
    """Sizes of one formal-language tier. Bin0 draws from ``train_lengths``; Bin1 from the next 50 lengths."""

    train_lengths: tuple[int, int]
    train_count: int
    bin_count: int
    batch_size: int
    max_steps: int | None


FORMAL_TIERS: dict[str, FormalTier] = {
    # Bhattamishra et al.'s generator sizes [verify against Irie et al. 2023: range 1–50 or 2–50].
    "paper": FormalTier(train_lengths=(1, 50), train_count=10_000, bin_count=500, batch_size=32, max_steps=None),
    "cpu": FormalTier(train_lengths=(1, 50), train_count=10_000, bin_count=500, batch_size=32, max_steps=5_000),
}


def legal_lengths(language: str, split: str, train_lengths: tuple[int, int] = (1, 50)) -> np.ndarray:
    """The member lengths a split draws from: train/Bin0 within ``train_lengths``; Bin1 just above it.

    Bin1 is [upper + 1, upper + 50], and [upper + 2, upper + 50] for Shuffle-2, with upper the
    largest training length (tasks.md §4). Only lengths >= 1 with members are kept.
    """
    check_choice("language", language, LANGUAGES)
    check_choice("split", split, SPLITS)
    lo, hi = train_lengths
    lo = check_int("train_lengths[0]", lo, 1)
    hi = check_int("train_lengths[1]", hi, lo)
    if split == "bin1":
        lo, hi = hi + (2 if language == "shuffle2" else 1), hi + 50
    lengths = np.arange(lo, hi + 1)
    lengths = lengths[lengths % _LENGTH_MODULUS[language] == 0]
    if lengths.size == 0:
        raise ConfigError("train_lengths", f"{train_lengths} leaves no {split} length with strings in {language}")
    return lengths


def _sample_shuffle2(rng: np.random.Generator, lens: np.ndarray, width: int) -> np.ndarray:
    # Symbols: ( ) [ ] = 0 1 2 3. A uniform legal move per step, opening only while everything
    # still open can be closed in the remaining length.
    n = len(lens)
    out = np.zeros((n, width), dtype=np.int64)
    open_round = np.zeros(n, dtype=np.int64)
    open_square = np.zeros(n, dtype=np.int64)
    for t in range(width):
        can_open = open_round + open_square + 1 <= lens - t - 1
        legal = np.stack([can_open, open_round > 0, can_open, open_square > 0], axis=1)
        move = np.where(legal, rng.random((n, 4)), -1.0).argmax(axis=1)
        move = np.where(t < lens, move, 0)
        out[:, t] = move
        active = t < lens
        open_round += active * ((move == 0).astype(np.int64) - (move == 1))
        open_square += active * ((move == 2).astype(np.int64) - (move == 3))
    return out


def _sample_strings(rng: np.random.Generator, language: str, lens: np.ndarray, width: int) -> np.ndarray:
    """(n, width) symbol ids; a uniform member of the language of each row's length (junk past it)."""
    t = np.arange(width)[None, :]
    ell = lens[:, None]
    if language == "parity":
        bits = rng.integers(0, 2, size=(len(lens), width))
        bits = np.where(t < ell - 1, bits, 0)
        last = bits.sum(axis=1) % 2
        bits[np.arange(len(lens)), lens - 1] = last
        return bits
    if language == "aa_star":
        return np.zeros((len(lens), width), dtype=np.int64)
    if language == "abab_star":
        return np.broadcast_to(t % 2, (len(lens), width)).astype(np.int64)
    if language == "anbn":
        return (t >= ell // 2).astype(np.int64)
    if language == "anbncn":
        return np.minimum(t // np.maximum(ell // 3, 1), 2).astype(np.int64)
    return _sample_shuffle2(rng, lens, width)


def _next_sets(language: str, strings: np.ndarray) -> np.ndarray:
    """(n, width + 1, |Σ| + 1) bool: the next-set after each prefix w[:t], t = 0 … width (EOS last)."""
    n, width = strings.shape
    k = len(ALPHABETS[language])
    onehot = strings[:, :, None] == np.arange(k)[None, None, :]
    counts = np.concatenate([np.zeros((n, 1, k), dtype=np.int64), np.cumsum(onehot, axis=1)], axis=1)
    t = np.arange(width + 1)[None, :]
    c = [counts[:, :, i] for i in range(k)]
    true = np.ones((n, width + 1), dtype=bool)
    if language == "parity":
        sets = [true, true, c[1] % 2 == 0]
    elif language == "aa_star":
        sets = [true, np.broadcast_to(t % 2 == 0, (n, width + 1))]
    elif language == "abab_star":
        sets = [np.broadcast_to(t % 2 == 0, (n, width + 1)), np.broadcast_to(t % 2 == 1, (n, width + 1)),
                np.broadcast_to(t % 4 == 0, (n, width + 1))]
    elif language == "anbn":
        na, nb = c
        sets = [nb == 0, (na > 0) & (nb < na), (na > 0) & (nb == na)]
    elif language == "anbncn":
        na, nb, nc = c
        sets = [(nb == 0) & (nc == 0), (na > 0) & (nc == 0) & (nb < na), (na > 0) & (nb == na) & (nc < na),
                (na > 0) & (nc == na)]
    else:
        open_round, open_square = c[0] - c[1], c[2] - c[3]
        sets = [true, open_round > 0, true, open_square > 0, (open_round == 0) & (open_square == 0)]
    return np.stack(sets, axis=-1)


def formal_language(n: int, seed: int, *, language: str = "parity", split: str = "train",
                    train_lengths: tuple[int, int] = (1, 50)) -> TaskBatch:
    """Generate n strings of a Table 5 language with their next-sets (tasks.md §4).

    Lengths are uniform over the split's legal lengths (:func:`legal_lengths`), then a member of that
    length is drawn (tasks.md §4 [project] sampling): parity draws ℓ − 1 uniform bits and a last bit
    that makes the count of 1s even; Shuffle-2 takes a uniform legal move at each step, opening only
    while everything can still be closed; the other languages have one string per length.
    Training and Bin0 share the length range: draw them with different seeds, and count their
    verbatim overlap with :func:`nestlearn.data.synthetic.base.verbatim_overlap`.

    Token ids: the symbols of ``ALPHABETS[language]`` in order, then BOS = |Σ|, PAD = |Σ| + 1.

    Args:
        n: number of strings.
        seed: seed of the generator's own RNG.
        language: one of :data:`LANGUAGES` (parity, aa_star, abab_star, anbn, anbncn, shuffle2).
        split: "train", "bin0" or "bin1".
        train_lengths: inclusive range of training string lengths.

    Returns:
        TaskBatch with inputs (n, W + 1) = BOS, the string, PAD…, W the longest length drawn;
        ``target_sets`` (n, W + 1, |Σ| + 1) bool (EOS last); ``targets`` the sets' codes
        (:func:`~nestlearn.data.synthetic.base.set_codes`), -100 past each string's end.
        ``meta``: ``language``, ``split``, ``lengths`` (n,), ``alphabet``, ``bos_id``, ``pad_id``.
    """
    n = check_int("n", n, 1)
    lengths_pool = legal_lengths(language, split, train_lengths)
    rng = make_rng(seed)
    lens = rng.choice(lengths_pool, size=n)
    width = int(lens.max())
    strings = _sample_strings(rng, language, lens, width)
    sigma = len(ALPHABETS[language])
    bos, pad = sigma, sigma + 1
    inside = np.arange(width)[None, :] < lens[:, None]
    strings = np.where(inside, strings, pad)
    sets = _next_sets(language, np.where(inside, strings, -1))
    scored = np.arange(width + 1)[None, :] <= lens[:, None]
    inputs = np.concatenate([np.full((n, 1), bos, dtype=np.int64), strings], axis=1)
    target_sets = torch.from_numpy(sets & scored[:, :, None])
    targets = torch.where(torch.from_numpy(scored), set_codes(target_sets), IGNORE_INDEX)
    return TaskBatch(inputs=torch.from_numpy(inputs), targets=targets, vocab_size=sigma + 2,
                     num_classes=sigma + 1, target_sets=target_sets,
                     meta={"language": language, "split": split, "lengths": torch.from_numpy(lens),
                           "alphabet": ALPHABETS[language], "bos_id": bos, "pad_id": pad})
