"""Scoring helpers shared by the synthetic and text tasks (tasks.md §0, §1–§7).

Tensor metrics follow the batch convention of :mod:`nestlearn.data.synthetic`: a position is scored
where ``targets != -100``. String metrics implement the decoding rules of RULER (tasks.md §2) and
BABILong (tasks.md §3.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nestlearn.data.synthetic.base import IGNORE_INDEX, set_codes
from nestlearn.errors import ConfigError


def _check_same_shape(predictions: torch.Tensor, targets: torch.Tensor) -> None:
    if predictions.shape != targets.shape:
        raise ConfigError("predictions", f"shape {tuple(predictions.shape)} must equal the targets' "
                                         f"shape {tuple(targets.shape)}")


def token_accuracy(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of labelled positions predicted correctly.

    Args:
        predictions: (B, T) predicted ids, e.g. ``logits.argmax(-1)``.
        targets: (B, T) target ids, -100 where not scored.

    Returns:
        Accuracy in [0, 1]; NaN when nothing is labelled.
    """
    _check_same_shape(predictions, targets)
    mask = targets != IGNORE_INDEX
    if not mask.any():
        return float("nan")
    return (predictions[mask] == targets[mask]).double().mean().item()


def sequence_accuracy(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """Exact match per row: a row counts when every labelled position is right.

    Rows without any labelled position are left out.

    Args:
        predictions: (B, T) predicted ids.
        targets: (B, T) target ids, -100 where not scored.

    Returns:
        Fraction of correct rows in [0, 1]; NaN when no row is labelled.
    """
    _check_same_shape(predictions, targets)
    mask = targets != IGNORE_INDEX
    scored = mask.any(dim=1)
    if not scored.any():
        return float("nan")
    row_ok = ((predictions == targets) | ~mask).all(dim=1)
    return row_ok[scored].double().mean().item()


def recognition_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Formal-language string accuracy (tasks.md §4): a string is right only when every position's set is.

    Args:
        logits: (B, T, K) one logit per symbol of Σ ∪ {EOS}; sigmoid >= 0.5 means "may come next".
        targets: (B, T) the batch's set codes, -100 past each string's end.

    Returns:
        Fraction of correct strings in [0, 1].
    """
    return sequence_accuracy(set_codes(logits >= 0), targets)


def ranking_accuracy(loglik: torch.Tensor, gold_index: int | torch.Tensor = 0) -> float:
    """Ranking metric (tasks.md §2.2, §3.2): correct when the gold candidate scores strictly highest.

    Ties with the gold candidate count as wrong, so a constant scorer gets 0, not 1/C.

    Args:
        loglik: (..., C) summed log-likelihood of each candidate continuation.
        gold_index: index of the gold candidate along the last axis: an int, or a tensor of shape
            ``loglik.shape[:-1]``.

    Returns:
        Mean over all leading positions (samples, or samples × gold values for MV/MQ) in [0, 1].
    """
    if loglik.dim() < 1 or loglik.shape[-1] < 2:
        raise ConfigError("loglik", f"needs a last axis of >= 2 candidates, got shape {tuple(loglik.shape)}")
    if isinstance(gold_index, int):
        gold_index = torch.full(loglik.shape[:-1], gold_index, dtype=torch.long)
    if gold_index.shape != loglik.shape[:-1]:
        raise ConfigError("gold_index", f"shape {tuple(gold_index.shape)} must equal loglik.shape[:-1] = "
                                        f"{tuple(loglik.shape[:-1])}")
    gold = loglik.gather(-1, gold_index.long().unsqueeze(-1))
    others = loglik.scatter(-1, gold_index.long().unsqueeze(-1), float("-inf"))
    return (gold.squeeze(-1) > others.amax(dim=-1)).double().mean().item()


def continuation_logliks(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed log-likelihood of each row's labelled tokens.

    Args:
        logits: (N, T, V) next-token logits of a continuation batch.
        targets: (N, T) target ids, -100 outside the continuation.

    Returns:
        (N,) float: Σ_t log p(targets[n, t]) over labelled t.
    """
    if logits.shape[:2] != targets.shape:
        raise ConfigError("logits", f"leading shape {tuple(logits.shape[:2])} must equal the targets' "
                                    f"shape {tuple(targets.shape)}")
    mask = targets != IGNORE_INDEX
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(dim=1)


def group_scores(row_scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Arrange per-row scores as (B, C) candidates per sample; missing candidates (group id -1) get -inf.

    Args:
        row_scores: (N,) one score per row of a continuation batch.
        groups: (B, C) row index of each sample's candidates, -1 for none.
    """
    picked = row_scores[groups.clamp_min(0)]
    return torch.where(groups >= 0, picked, torch.full_like(picked, float("-inf")))


def exact_match(prediction: str, gold: str) -> bool:
    """Single-value NIAH decoding (tasks.md §2.2): the value string, ignoring surrounding whitespace."""
    return prediction.strip() == gold.strip()


def string_match_all(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> float:
    """RULER's ``string_match_all`` (tasks.md §2.1).

    Mean over samples of the fraction of gold values found, case-insensitively, in the prediction,
    times 100.
    """
    if len(predictions) != len(golds) or not golds:
        raise ConfigError("predictions", f"needs one prediction per gold list and at least one sample, got "
                                         f"{len(predictions)} predictions and {len(golds)} gold lists")
    total = 0.0
    for pred, gold in zip(predictions, golds):
        pred = pred.lower()
        total += sum(g.lower() in pred for g in gold) / len(gold)
    return 100.0 * total / len(golds)


def babilong_match(output: str, target: str) -> bool:
    """BABILong's decoding rule (tasks.md §3.2): the first sentence of the lower-cased output contains the target."""
    return target.lower() in output.lower().split(".")[0]


def niah_decoding_accuracy(generated: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """The NIAH decoding metric of tasks.md §2.2, in [0, 1].

    Single-value tasks: exact match of the value in the ``len(value) + 1`` generated tokens. MV and
    MQ: RULER's ``string_match_all`` (divided by 100).

    Args:
        generated: one decoded string per sample.
        answers: the batch's ``meta["answers"]``, one list of gold values per sample.
    """
    if len(generated) != len(answers) or not answers:
        raise ConfigError("generated", f"needs one string per sample, got {len(generated)} for {len(answers)}")
    if all(len(a) == 1 for a in answers):
        return sum(exact_match(g, a[0]) for g, a in zip(generated, answers)) / len(answers)
    return string_match_all(generated, answers) / 100.0
