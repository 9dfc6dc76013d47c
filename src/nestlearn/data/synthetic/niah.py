"""Needle in a haystack, RULER's tasks adapted to small byte-level models (tasks.md §2).

Each row is one prompt, at most ``seq_len + 1`` bytes, left-padded with :data:`PAD_ID`, ending with
the answer; inputs/targets are it shifted by one, and only the answer bytes are scored. The essay
haystack is contiguous KJV verse lines (one verse = one sentence); the noise haystack is RULER's
repeated block; the needle haystack is distractor needles only.

Both metrics of tasks.md §2.2 are served: ``meta["prompts"]`` feeds greedy decoding, scored by
:func:`nestlearn.eval.metrics.niah_decoding_accuracy`; ``meta["candidates"]`` holds the gold value
and N distractors per gold value for the ranking metric, whose rows :func:`ranking_batch` builds
and :func:`nestlearn.eval.metrics.ranking_accuracy` scores, gold at index 0.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
import torch

from nestlearn.data.synthetic.base import (
    IGNORE_INDEX,
    TaskBatch,
    check_int,
    continuation_batch,
    make_rng,
    pad_left,
)
from nestlearn.data.synthetic.text import (
    KJV_SPLITS,
    PAD_ID,
    TEXT_VOCAB,
    encode,
    verse_lines,
    window_of_lines,
    word_list,
    word_list_info,
)
from nestlearn.errors import ConfigError, check_choice, check_range

RULER_DEPTHS = tuple(float(d) for d in np.round(np.linspace(0, 100, 40)))
NOISE_BLOCK = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"


@dataclass(frozen=True)
class NIAHSpec:
    """One RULER task (tasks.md §2.1 table)."""

    haystack: str  # "noise", "essay" or "needle"
    key_type: str  # "words" or "uuids"
    value_type: str  # "numbers" or "uuids"
    num_keys: int
    num_values: int
    num_queries: int


NIAH_TASKS: dict[str, NIAHSpec] = {
    "s_niah_1": NIAHSpec("noise", "words", "numbers", 1, 1, 1),
    "s_niah_2": NIAHSpec("essay", "words", "numbers", 1, 1, 1),
    "s_niah_3": NIAHSpec("essay", "words", "uuids", 1, 1, 1),
    "mk_niah_1": NIAHSpec("essay", "words", "numbers", 4, 1, 1),
    "mk_niah_2": NIAHSpec("needle", "words", "numbers", 1, 1, 1),
    "mk_niah_3": NIAHSpec("needle", "uuids", "uuids", 1, 1, 1),
    "mv_niah": NIAHSpec("essay", "words", "numbers", 1, 4, 1),
    "mq_niah": NIAHSpec("essay", "words", "numbers", 4, 1, 4),
}


@dataclass(frozen=True)
class NIAHTier:
    """Sizes of one NIAH tier; lengths in byte tokens."""

    tasks: tuple[str, ...]
    train_len: int | None
    test_lens: tuple[int, ...]
    samples_per_cell: int


NIAH_TIERS: dict[str, NIAHTier] = {
    "paper": NIAHTier(tasks=tuple(NIAH_TASKS), train_len=None, test_lens=(4096, 8192, 16384), samples_per_cell=500),
    "titans": NIAHTier(tasks=("s_niah_1", "s_niah_2", "s_niah_3"), train_len=None,
                       test_lens=(2048, 4096, 8192, 16384), samples_per_cell=500),
    "cpu": NIAHTier(tasks=tuple(NIAH_TASKS), train_len=512, test_lens=(256, 512, 1024, 2048, 4096),
                    samples_per_cell=100),
}


def _random_value(rng: np.random.Generator, kind: str) -> str:
    if kind == "numbers":
        return str(int(rng.integers(1_000_000, 10_000_000)))
    if kind == "uuids":
        return str(uuid.UUID(bytes=rng.integers(0, 256, size=16, dtype=np.uint8).tobytes(), version=4))
    words = word_list()
    i, j = rng.choice(len(words), size=2, replace=False)
    return f"{words[i]}-{words[j]}"


def _distinct_values(rng: np.random.Generator, kind: str, count: int, exclude: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        v = _random_value(rng, kind)
        if v not in exclude and v not in out:
            out.append(v)
    return out


def _templates(spec: NIAHSpec, query: str) -> tuple[str, str]:
    """(head, tail) of the RULER prompt around the context; singular wording for one needle and one query."""
    plural = spec.value_type
    single = spec.num_keys * spec.num_values == 1 and spec.num_queries == 1
    if single:
        kind = plural[:-1]
        head = (f"A special magic {kind} is hidden within the following text. Make sure to memorize it. "
                f"I will quiz you about the {kind} afterwards.\n")
        tail = (f"What is the special magic {kind} for {query} mentioned in the provided text?"
                f" The special magic {kind} for {query} mentioned in the provided text is")
    else:
        head = (f"Some special magic {plural} are hidden within the following text. Make sure to memorize it. "
                f"I will quiz you about the {plural} afterwards.\n")
        tail = (f"What are all the special magic {plural} for {query} mentioned in the provided text?"
                f" The special magic {plural} for {query} mentioned in the provided text are")
    return head, tail


def needle_text(value_type: str, key: str, value: str) -> str:
    """RULER's needle sentence, as one line."""
    return f"One of the special magic {value_type} for {key} is: {value}.\n"


def niah(n: int, seed: int, *, task: str = "s_niah_2", seq_len: int = 512, split: str = "test",
         depth: float | None = None, num_distractors: int = 9) -> TaskBatch:
    """Generate n NIAH prompts of one RULER task (tasks.md §2), byte-level.

    Needle depths: with ``depth=None`` each essay needle's depth is drawn from the 40 RULER depths
    ``round(linspace(0, 100, 40))`` and noise/needle-haystack needles go to uniform line indices; a
    given ``depth`` (percent) places every needle there. A needle at depth d goes before haystack line
    ``int(n_lines · d / 100)``. The haystack fills the room left by the prompt, the needles and the
    answer with whole lines.

    Args:
        n: number of prompts.
        seed: seed of the generator's own RNG (keys, values, haystack windows, depths).
        task: one of :data:`NIAH_TASKS`.
        seq_len: T, the input length in bytes; prompt, needles and answer must fit in T + 1.
        split: KJV split of the essay haystack: "test" for evaluation,
            "train" for training data (tasks.md §2.2); "validation" is allowed.
        depth: fixed needle depth in percent [0, 100], or None.
        num_distractors: N distractor values per gold value for the ranking metric.

    Returns:
        TaskBatch with inputs/targets (n, T) over :data:`TEXT_VOCAB` ids. ``meta``:
          - ``task``, ``split``, ``seq_len``, ``word_list`` (provenance of the key words);
          - ``answers``: list of n lists of gold value strings, in query order, and for MV in the
            order the needles appear in the context;
          - ``answer_text``: the scored continuation, " " + ", ".join(golds);
          - ``prompts``: (n, P) left-padded prompt ids, P = T + 1 − len(answer_text); decode
            ``len(answer_text)`` tokens greedily from it;
          - ``keys``: list of n lists of needle keys; ``queries``: list of n lists of queried keys;
          - ``depths``: (n, num_needles) float64 tensor, depth percent of each needle;
          - ``needle_lines``: (n, num_needles) int64 tensor, haystack lines before each needle;
          - ``haystack_lines``: (n,) int64 tensor, lines of haystack per row;
          - ``candidates``: n × G × (N + 1) value strings, gold first, G = number of gold values;
          - ``candidate_contexts``: n × G strings, the answer text before each candidate (earlier
            golds for MV/MQ), so candidate g is scored as prompt + context + candidate;
          - ``candidate_ids``: (n, G, N + 1, V) byte ids of the candidates (values have fixed length).
    """
    check_choice("task", task, tuple(NIAH_TASKS))
    check_choice("split", split, KJV_SPLITS)
    n = check_int("n", n, 1)
    T = check_int("seq_len", seq_len, 1)
    num_distractors = check_int("num_distractors", num_distractors, 1)
    if depth is not None:
        check_range("depth", depth, 0.0, 100.0)
    spec = NIAH_TASKS[task]
    rng = make_rng(seed)
    lines = verse_lines(split) if spec.haystack == "essay" else ()
    rows, prompts, answers, answer_texts, all_keys, all_queries = [], [], [], [], [], []
    depths, needle_lines, hay_counts, candidates, contexts = [], [], [], [], []
    for _ in range(n):
        keys = _distinct_values(rng, spec.key_type, spec.num_keys, set())
        needles: list[tuple[str, str]] = []
        values_used: set[str] = set()
        for key in keys:
            vals = _distinct_values(rng, spec.value_type, spec.num_values, values_used)
            values_used.update(vals)
            needles.extend((key, v) for v in vals)
        queries = keys[: spec.num_queries]
        golds = [v for k, v in needles if k in queries]  # reordered below, once the needles are placed
        distractor_needle_values = [v for k, v in needles if k not in queries]
        query_text = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]
        head, tail = _templates(spec, query_text)
        answer = " " + ", ".join(golds)
        needle_lines_text = [needle_text(spec.value_type, k, v) for k, v in needles]
        fixed = len(head) + len(tail) + len(answer) + sum(len(s) for s in needle_lines_text)
        budget = T + 1 - fixed
        if budget < 0:
            raise ConfigError("seq_len", f"{T} is too short for task {task!r}: the prompt, needles and answer "
                                         f"alone need {fixed - 1} tokens")
        if spec.haystack == "essay":
            hay = [line.decode("utf-8") for line in window_of_lines(rng, lines, budget)]
        elif spec.haystack == "noise":
            hay = [NOISE_BLOCK] * (budget // len(NOISE_BLOCK))
        else:
            hay, used = [], 0
            taken = set(keys)
            while True:
                k = _distinct_values(rng, spec.key_type, 1, taken)[0]
                v = _distinct_values(rng, spec.value_type, 1, values_used)[0]
                line = needle_text(spec.value_type, k, v)
                if used + len(line) > budget:
                    break
                taken.add(k)
                values_used.add(v)
                distractor_needle_values.append(v)
                hay.append(line)
                used += len(line)
        m = len(hay)
        if depth is None and spec.haystack != "essay":
            idx = rng.integers(0, m + 1, size=len(needles))
            d = 100.0 * idx / max(m, 1)
        else:
            d = (np.full(len(needles), float(depth)) if depth is not None
                 else np.array(RULER_DEPTHS)[rng.integers(0, len(RULER_DEPTHS), size=len(needles))])
            idx = (m * d / 100.0).astype(np.int64)
        context = list(hay)
        order = sorted(range(len(needles)), key=lambda j: (idx[j], j))
        # Insert from the last (index, order) backwards so needles sharing a slot keep their order.
        for j in reversed(order):
            context.insert(int(idx[j]), needle_lines_text[j])
        # Golds in query order, and a key's several values (MV) in their order in the context.
        golds = [needles[j][1] for q in queries for j in order if needles[j][0] == q]
        answer = " " + ", ".join(golds)
        text = head + "".join(context) + tail + answer
        ids = encode(text)
        rows.append(ids)
        prompts.append(ids[: len(ids) - len(answer)])
        cands, ctxs = [], []
        needle_pool = [v for v in distractor_needle_values if v not in golds]
        needle_pool = [needle_pool[i] for i in rng.permutation(len(needle_pool))]
        for g, gold in enumerate(golds):
            extra = needle_pool[:num_distractors]
            extra += _distinct_values(rng, spec.value_type, num_distractors - len(extra), set(golds) | set(extra))
            cands.append([gold] + extra)
            ctxs.append(" " + "".join(f"{x}, " for x in golds[:g]))
        answers.append(golds)
        answer_texts.append(answer)
        all_keys.append(keys)
        all_queries.append(queries)
        depths.append(d)
        needle_lines.append(idx)
        hay_counts.append(m)
        candidates.append(cands)
        contexts.append(ctxs)

    seq = pad_left(rows, PAD_ID, T + 1)
    answer_len = len(answer_texts[0])
    inputs, targets = seq[:, :-1], seq[:, 1:].copy()
    targets[:, : T - answer_len] = IGNORE_INDEX
    candidate_ids = np.array([[[encode(c) for c in per_gold] for per_gold in row] for row in candidates])
    return TaskBatch(
        inputs=torch.from_numpy(np.ascontiguousarray(inputs)), targets=torch.from_numpy(targets),
        vocab_size=TEXT_VOCAB, num_classes=TEXT_VOCAB,
        meta={"task": task, "split": split, "seq_len": T, "word_list": word_list_info(), "answers": answers,
              "answer_text": answer_texts, "prompts": torch.from_numpy(pad_left(prompts, PAD_ID, T + 1 - answer_len)),
              "keys": all_keys, "queries": all_queries, "depths": torch.tensor(np.array(depths), dtype=torch.float64),
              "needle_lines": torch.tensor(np.array(needle_lines), dtype=torch.int64),
              "haystack_lines": torch.tensor(hay_counts, dtype=torch.int64),
              "candidates": candidates, "candidate_contexts": contexts,
              "candidate_ids": torch.from_numpy(candidate_ids)})


def ranking_batch(batch: TaskBatch) -> TaskBatch:
    """The ranking metric's rows for a NIAH batch: prompt + candidate context + candidate value.

    Score the rows with :func:`nestlearn.eval.metrics.continuation_logliks`, arrange them with
    ``group_scores(scores, meta["groups"]).view(B, G, N + 1)`` and pass that to
    :func:`nestlearn.eval.metrics.ranking_accuracy` (gold at index 0).

    Returns:
        A continuation batch (:func:`nestlearn.data.synthetic.base.continuation_batch`) of
        B·G·(N + 1) rows; ``meta["shape"]`` = (B, G, N + 1).
    """
    prompts = [row[row != PAD_ID].numpy() for row in batch.meta["prompts"]]
    items = [[(np.concatenate([prompt, encode(ctx)]), encode(cand)) for ctx, cands in zip(ctxs, per_gold)
              for cand in cands]
             for prompt, ctxs, per_gold in zip(prompts, batch.meta["candidate_contexts"], batch.meta["candidates"])]
    out = continuation_batch(items, PAD_ID, TEXT_VOCAB)
    out.meta["shape"] = tuple(batch.meta["candidate_ids"].shape[:3])
    return out
