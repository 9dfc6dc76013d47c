"""Scoring of the text probes with a trained model: NIAH (tasks.md §2.2) and bAbI-style / BABILong (§3.2).

Both probes are scored two ways:

- **decoding**: greedy decoding after the prompt. NIAH generates ``len(answer_text)`` tokens
  (``len(value) + 1`` for one value) and scores exact match, or RULER's ``string_match_all`` for
  several values (:func:`nestlearn.eval.metrics.niah_decoding_accuracy`); bAbI-style generates
  enough tokens for the longest answer and applies BABILong's rule
  (:func:`nestlearn.eval.metrics.babilong_match`).
- **ranking**: the summed log-likelihood of the gold continuation against the candidates (NIAH:
  N = 9 distractor values of the same type; bAbI-style: the task's answer set); correct when the
  gold scores strictly highest (:func:`nestlearn.eval.metrics.ranking_accuracy`).

The prompt is read once per sample and its fast state (:class:`~nestlearn.models.lm.LMState`: KV
cache or memories) is copied to every candidate, so ranking costs one long forward per sample plus
short continuations, not one long forward per candidate. It agrees with scoring full
``prompt + candidate`` rows (:func:`nestlearn.eval.metrics.continuation_logliks` over
:func:`nestlearn.data.synthetic.niah_ranking_batch`) up to floating-point rounding (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from nestlearn.data.synthetic.base import TaskBatch
from nestlearn.data.synthetic.text import encode
from nestlearn.errors import ConfigError
from nestlearn.eval.metrics import babilong_match, niah_decoding_accuracy
from nestlearn.models.lm import LMState

Ids = Sequence[int] | np.ndarray | torch.Tensor


def expand_state(state: LMState, index: torch.Tensor) -> LMState:
    """The state of rows ``index`` of a batch: every tensor's batch axis (the first) gathered.

    Args:
        state: a model state for B sequences.
        index: (R,) int64 row indices in [0, B), repeats allowed.
    """
    return LMState(state.pos, [None if s is None else {k: v.index_select(0, index.to(v.device)) for k, v in s.items()}
                               for s in state.layers])


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def read_prompts(model: torch.nn.Module, prompts: torch.Tensor) -> tuple[torch.Tensor, LMState]:
    """Read (B, P) prompt ids from a fresh state; returns the (B, V) next-token logits and the state."""
    out = model(prompts.to(_device(model)))
    return out.logits[:, -1].float(), out.state


@torch.no_grad()
def greedy_from(model: torch.nn.Module, logits: torch.Tensor, state: LMState, n_tokens: int) -> torch.Tensor:
    """Greedy decoding of ``n_tokens`` ids after a prompt already read: (B, V) logits + its state -> (B, n_tokens)."""
    if n_tokens < 1:
        raise ConfigError("n_tokens", f"must be >= 1, got {n_tokens}")
    tokens = []
    for i in range(n_tokens):
        nxt = logits.argmax(dim=-1, keepdim=True)
        tokens.append(nxt)
        if i + 1 < n_tokens:
            out = model(nxt, state=state)
            logits, state = out.logits[:, -1].float(), out.state
    return torch.cat(tokens, dim=1).cpu()


def decode_ids(ids: Ids) -> str:
    """Byte ids -> text; a special id (>= 256, e.g. PAD) becomes U+FFFD so that it never matches a value."""
    out = bytearray()
    text = []
    for i in (ids.tolist() if hasattr(ids, "tolist") else ids):
        if 0 <= i < 256:
            out.append(i)
        else:
            text.append(out.decode("utf-8", errors="replace") + "\ufffd")
            out = bytearray()
    return "".join(text) + out.decode("utf-8", errors="replace")


@torch.no_grad()
def continuation_scores(model: torch.nn.Module, logits: torch.Tensor, state: LMState,
                        items: Sequence[Sequence[tuple[Ids, Ids]]], rows_per_pass: int = 64) -> list[torch.Tensor]:
    """Summed log-likelihood of candidate continuations of prompts already read.

    Args:
        logits: (B, V) next-token logits after each prompt (:func:`read_prompts`).
        state: the state after the prompts.
        items: per sample, a list of (context ids, candidate ids): the candidate is scored as the
            continuation of prompt + context; the context itself is read but not scored.
        rows_per_pass: candidate rows per forward (bounds the memory of copied states).

    Returns:
        Per sample, a (C_i,) float tensor: Σ log p(candidate token) over the candidate's tokens.
    """
    if len(items) != logits.shape[0]:
        raise ConfigError("items", f"needs one candidate list per prompt, got {len(items)} for {logits.shape[0]}")
    rows = [(i, np.asarray(ctx, dtype=np.int64), np.asarray(cand, dtype=np.int64))
            for i, cands in enumerate(items) for ctx, cand in cands]
    if any(len(cand) == 0 for _, _, cand in rows):
        raise ConfigError("items", "every candidate needs at least one token")
    scores = torch.empty(len(rows))
    device = _device(model)
    for start in range(0, len(rows), rows_per_pass):
        chunk = rows[start:start + rows_per_pass]
        index = torch.tensor([i for i, _, _ in chunk], device=device)
        width = max(len(ctx) + len(cand) for _, ctx, cand in chunk)
        seqs = torch.zeros(len(chunk), width, dtype=torch.long)
        scored = torch.zeros(len(chunk), width, dtype=torch.bool)
        for r, (_, ctx, cand) in enumerate(chunk):
            n = len(ctx) + len(cand)
            seqs[r, :n] = torch.from_numpy(np.concatenate([ctx, cand]))
            scored[r, len(ctx):n] = True
        step_logits = logits.index_select(0, index).unsqueeze(1)
        if width > 1:
            # Right padding is harmless: a causal model's logits at t never see positions after t.
            out = model(seqs[:, :-1].to(device), state=expand_state(state, index))
            step_logits = torch.cat([step_logits, out.logits.float()], dim=1)
        logp = torch.log_softmax(step_logits, dim=-1).gather(-1, seqs.to(device).unsqueeze(-1)).squeeze(-1).cpu()
        scores[start:start + len(chunk)] = (logp * scored).sum(dim=1)
    out, k = [], 0
    for cands in items:
        out.append(scores[k:k + len(cands)])
        k += len(cands)
    return out


def _strictly_first(scores: torch.Tensor, gold: int) -> bool:
    others = torch.cat([scores[:gold], scores[gold + 1:]])
    return bool(scores[gold] > others.max())


@torch.no_grad()
def score_prompts(model: torch.nn.Module, prompts: torch.Tensor, n_decode: int,
                  items: Sequence[Sequence[tuple[Ids, Ids]]], samples_per_pass: int = 8,
                  rows_per_pass: int = 64) -> tuple[list[str], list[torch.Tensor]]:
    """Greedy continuations and candidate scores for left-padded prompts, ``samples_per_pass`` prompts at a time.

    Args:
        prompts: (B, P) left-padded prompt ids, the layout the model was trained on.
        n_decode: tokens to generate greedily per prompt.
        items: per prompt, the (context, candidate) pairs of :func:`continuation_scores`.

    Returns:
        The decoded strings (B) and the candidate scores (B tensors).
    """
    was_training = model.training
    model.eval()
    generated: list[str] = []
    scores: list[torch.Tensor] = []
    try:
        for start in range(0, prompts.shape[0], samples_per_pass):
            logits, state = read_prompts(model, prompts[start:start + samples_per_pass])
            generated += [decode_ids(row) for row in greedy_from(model, logits, state, n_decode)]
            scores += continuation_scores(model, logits, state, items[start:start + samples_per_pass], rows_per_pass)
    finally:
        model.train(was_training)
    return generated, scores


def niah_items(batch: TaskBatch) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per sample, G·(N + 1) (context, candidate) pairs: for each gold value, the earlier golds as
    context (MV/MQ) and the gold (first) and its N distractors as candidates (tasks.md §2.2)."""
    return [[(encode(ctx), encode(cand)) for ctx, cands in zip(ctxs, per_gold) for cand in cands]
            for ctxs, per_gold in zip(batch.meta["candidate_contexts"], batch.meta["candidates"])]


def niah_scores(model: torch.nn.Module, batch: TaskBatch, samples_per_pass: int = 8) -> dict[str, Any]:
    """Both NIAH metrics of tasks.md §2.2 on a batch of :func:`nestlearn.data.synthetic.niah`.

    Returns:
        ``decoding`` and ``ranking`` accuracies in [0, 1], and per sample ``generated`` (str),
        ``decoding_correct`` (bool: exact match, or all golds found for MV/MQ) and
        ``ranking_correct`` (fraction of the sample's gold values ranked strictly first).
    """
    answers = batch.meta["answers"]
    n_decode = max(len(t) for t in batch.meta["answer_text"])
    generated, scores = score_prompts(model, batch.meta["prompts"], n_decode, niah_items(batch), samples_per_pass)
    ranked = []
    for s, per_gold in zip(scores, batch.meta["candidates"]):
        s = s.view(len(per_gold), -1)
        ranked.append(sum(_strictly_first(row, 0) for row in s) / len(per_gold))
    decoding = [niah_decoding_accuracy([g], [a]) for g, a in zip(generated, answers)]
    return {"decoding": niah_decoding_accuracy(generated, answers), "ranking": float(np.mean(ranked)),
            "generated": generated, "decoding_correct": [d == 1.0 for d in decoding], "ranking_correct": ranked}


def babi_items(batch: TaskBatch) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per sample, one (empty context, " {candidate}") pair per entry of the task's answer set."""
    empty = np.zeros(0, dtype=np.int64)
    return [[(empty, encode(" " + cand)) for cand in cands] for cands in batch.meta["answer_sets"]]


def babi_scores(model: torch.nn.Module, batch: TaskBatch, samples_per_pass: int = 8) -> dict[str, Any]:
    """Both bAbI-style metrics of tasks.md §3.2 on a batch of :func:`nestlearn.data.synthetic.babi`.

    Decoding generates as many tokens as the longest " {candidate}" of the batch's answer sets plus
    one, and counts a sample correct when the first sentence of the lower-cased output contains the
    answer (BABILong's rule). Ranking: the answer must score strictly highest within its answer set.

    Returns:
        ``decoding`` and ``ranking`` accuracies in [0, 1], and per sample ``generated``,
        ``decoding_correct`` and ``ranking_correct`` (bools).
    """
    answers = batch.meta["answers"]
    n_decode = max(len(encode(" " + c)) for cands in batch.meta["answer_sets"] for c in cands) + 1
    generated, scores = score_prompts(model, batch.meta["prompts"], n_decode, babi_items(batch), samples_per_pass)
    decoding = [babilong_match(g, a) for g, a in zip(generated, answers)]
    ranking = [_strictly_first(s, int(i)) for s, i in zip(scores, batch.meta["gold_index"])]
    return {"decoding": float(np.mean(decoding)), "ranking": float(np.mean(ranking)), "generated": generated,
            "decoding_correct": decoding, "ranking_correct": ranking}
