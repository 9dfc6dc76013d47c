"""NIAH (tasks.md §2): needles present once at the stated depth, answers from the context, both metrics' inputs."""

import re

import pytest
import torch

from nestlearn.data.kjv import kjv_splits
from nestlearn.data.synthetic import niah, niah_ranking_batch
from nestlearn.data.synthetic.niah import NIAH_TASKS, RULER_DEPTHS
from nestlearn.data.synthetic.text import PAD_ID, word_list, word_list_info
from nestlearn.errors import ConfigError
from nestlearn.eval.metrics import (
    continuation_logliks,
    group_scores,
    niah_decoding_accuracy,
    ranking_accuracy,
)

NEEDLE = re.compile(r"^One of the special magic (numbers|uuids) for (\S+) is: (\S+)\.$")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _text(row):
    ids = [t for t in row if t != PAD_ID]
    return bytes(ids).decode("utf-8")


def _context_lines(batch, i):
    """The lines between the instruction line and the question, rebuilt from the row's bytes."""
    full = _text(batch.inputs[i].tolist() + [batch.targets[i, -1].item()])
    lines = full.split("\n")
    return full, lines[1:-1]


@pytest.mark.parametrize("task", sorted(NIAH_TASKS))
def test_answers_are_the_values_of_the_queried_keys_in_the_context(task):
    spec = NIAH_TASKS[task]
    T = 1024
    batch = niah(6, seed=4, task=task, seq_len=T)
    assert batch.inputs.shape == batch.targets.shape == (6, T)
    assert batch.inputs.max() <= PAD_ID and batch.inputs.min() >= 0 and batch.vocab_size == 257
    for i in range(6):
        full, lines = _context_lines(batch, i)
        needles = [NEEDLE.match(line) for line in lines if NEEDLE.match(line)]
        table = {}
        for m in needles:
            table.setdefault(m[2], []).append(m[3])
        queries = batch.meta["queries"][i]
        golds = batch.meta["answers"][i]
        assert len(queries) == spec.num_queries and len(golds) == spec.num_queries * spec.num_values
        assert golds == [v for q in queries for v in table[q]]
        for q in queries:
            assert full.count(f"for {q} is: ") == spec.num_values  # each needle present exactly once
        if spec.value_type == "numbers":
            assert all(re.fullmatch(r"[1-9]\d{6}", g) for g in golds)
        else:
            assert all(UUID4.match(g) for g in golds)
        if spec.haystack == "needle":
            assert len(needles) == len(lines) >= 4  # the haystack is made of distractor needles
        # The scored bytes are exactly the answer at the end of the row.
        scored = batch.targets[i][batch.targets[i] != -100].tolist()
        assert bytes(scored).decode() == batch.meta["answer_text"][i] == " " + ", ".join(golds)
        assert full.endswith(batch.meta["answer_text"][i])
        assert _text(batch.meta["prompts"][i].tolist()) + batch.meta["answer_text"][i] == full
        single = spec.num_queries * spec.num_values * spec.num_keys == 1
        assert full.endswith(("is" if single else "are") + batch.meta["answer_text"][i])


@pytest.mark.parametrize("depth", [0.0, 33.0, 50.0, 100.0])
def test_essay_needle_sits_at_the_stated_depth(depth):
    batch = niah(4, seed=9, task="s_niah_2", seq_len=2048, depth=depth)
    test_split = kjv_splits()["test"].decode()
    for i in range(4):
        _, lines = _context_lines(batch, i)
        at = [k for k, line in enumerate(lines) if NEEDLE.match(line)]
        assert len(at) == 1
        haystack = [line for k, line in enumerate(lines) if k != at[0]]
        assert len(haystack) > 5 and "\n".join(haystack) + "\n" in test_split  # contiguous test-split verses
        assert at[0] == int(len(haystack) * depth / 100)


def test_random_depths_come_from_the_ruler_grid():
    batch = niah(30, seed=1, task="mk_niah_1", seq_len=1024)
    assert set(batch.meta["depths"].flatten().tolist()) <= set(RULER_DEPTHS)
    m = batch.meta["haystack_lines"][:, None]
    assert torch.equal(batch.meta["needle_lines"], (m * batch.meta["depths"] / 100).long())


def test_ranking_candidates_and_metric():
    batch = niah(5, seed=2, task="mk_niah_1", seq_len=1024)
    ids = batch.meta["candidate_ids"]
    assert ids.shape == (5, 1, 10, 7)
    for i in range(5):
        cands = batch.meta["candidates"][i][0]
        assert cands[0] == batch.meta["answers"][i][0] and len(set(cands)) == 10
        full, _ = _context_lines(batch, i)
        others = {v for v in re.findall(r"is: (\d{7})\.", full)} - {cands[0]}
        assert len(others) == 3 and others <= set(cands[1:])  # distractor needles' values are distractors
        assert bytes(ids[i, 0, 0].tolist()).decode() == cands[0]
    loglik = torch.randn(5, 1, 10)
    loglik[..., 0] = 10.0
    assert ranking_accuracy(loglik) == 1.0
    mv = niah(3, seed=2, task="mv_niah", seq_len=1024)
    assert mv.meta["candidate_ids"].shape == (3, 4, 10, 7)
    golds = mv.meta["answers"][0]
    assert mv.meta["candidate_contexts"][0] == [" ", f" {golds[0]}, ", f" {golds[0]}, {golds[1]}, ",
                                                f" {golds[0]}, {golds[1]}, {golds[2]}, "]
    assert not set(golds) & {c for per_gold in mv.meta["candidates"][0] for c in per_gold[1:]}


def test_decoding_accuracy_single_and_multi_value():
    assert niah_decoding_accuracy([" 1234567", " 7654321"], [["1234567"], ["1111111"]]) == 0.5
    assert niah_decoding_accuracy(["1, 2 and 3", "none"], [["1", "2", "4"], ["5"]]) == pytest.approx((2 / 3 + 0) / 2)


def test_determinism_word_list_and_errors():
    a, b = niah(3, seed=5, task="s_niah_3", seq_len=512), niah(3, seed=5, task="s_niah_3", seq_len=512)
    assert torch.equal(a.inputs, b.inputs) and a.meta["answers"] == b.meta["answers"]
    assert not torch.equal(a.inputs, niah(3, seed=6, task="s_niah_3", seq_len=512).inputs)
    train = niah(3, seed=5, task="s_niah_2", seq_len=512, split="train")
    assert train.meta["split"] == "train"
    words = word_list()
    assert list(words) == sorted(words) and all(re.fullmatch("[a-z]{4,9}", w) for w in words)
    assert word_list_info()["size"] == len(words) > 1000
    with pytest.raises(ConfigError, match="^seq_len:"):
        niah(1, seed=0, task="mq_niah", seq_len=300)
    with pytest.raises(ConfigError, match="^task:"):
        niah(1, seed=0, task="niah_single_1")
    with pytest.raises(ConfigError, match="^depth:"):
        niah(1, seed=0, depth=101)
    with pytest.raises(ConfigError, match="^split:"):
        niah(1, seed=0, split="dev")


def _oracle_ranking(ranking, gold_rows):
    """Logits that put all mass on the labelled bytes of the gold rows and are uniform elsewhere."""
    logits = torch.zeros(*ranking.inputs.shape, 257)
    mask = ranking.label_mask.clone()
    mask[~gold_rows] = False
    rows, cols = mask.nonzero(as_tuple=True)
    logits[rows, cols, ranking.targets[rows, cols]] = 30.0
    return continuation_logliks(logits, ranking.targets)


def test_ranking_rows_are_prompt_context_candidate_and_an_oracle_scores_one():
    batch = niah(2, seed=3, task="mv_niah", seq_len=1024)
    ranking = niah_ranking_batch(batch)
    B, G, C = ranking.meta["shape"]
    assert (B, G, C) == (2, 4, 10) and ranking.inputs.shape[0] == B * G * C
    groups = ranking.meta["groups"].view(B, G, C)
    for i in range(B):
        prompt = _text(batch.meta["prompts"][i].tolist())
        for g in range(G):
            for c in range(C):
                r = groups[i, g, c]
                row = _text(ranking.inputs[r].tolist() + [ranking.targets[r, -1].item()])
                cand = batch.meta["candidates"][i][g][c]
                assert row == prompt + batch.meta["candidate_contexts"][i][g] + cand
                assert bytes(ranking.targets[r][ranking.targets[r] != -100].tolist()).decode() == cand
    single = niah(3, seed=1, task="s_niah_1", seq_len=512)
    ranking = niah_ranking_batch(single)
    gold_rows = torch.zeros(ranking.inputs.shape[0], dtype=torch.bool)
    gold_rows[ranking.meta["groups"][:, 0]] = True
    scores = group_scores(_oracle_ranking(ranking, gold_rows), ranking.meta["groups"]).view(ranking.meta["shape"])
    assert ranking_accuracy(scores) == 1.0
    assert ranking_accuracy(group_scores(torch.zeros(ranking.inputs.shape[0]), ranking.meta["groups"])) == 0.0
