"""bAbI-style stories (tasks.md §3): every answer re-derived by a small simulator that reads the text."""

import re

import pytest
import torch

from nestlearn.data.kjv import kjv_splits
from nestlearn.data.synthetic import babi, babi_ranking_batch
from nestlearn.data.synthetic.text import PAD_ID
from nestlearn.errors import ConfigError
from nestlearn.eval.metrics import (
    babilong_match,
    continuation_logliks,
    group_scores,
    ranking_accuracy,
)

PLACES = "bathroom|bedroom|garden|hallway|kitchen|office"
THINGS = "apple|football|milk"
NAMES = "John|Mary|Sandra|Daniel|Bill|Fred|Jeff"
MOVE = re.compile(rf"^({NAMES}) (?:went to|journeyed to|travelled to|moved to|went back to) the ({PLACES})\.$")
GRAB = re.compile(rf"^({NAMES}) (?:picked up|got|grabbed|took) the ({THINGS})\.$")
DROP = re.compile(rf"^({NAMES}) (?:dropped|discarded|put down|left) the ({THINGS})\.$")
GIVE = re.compile(rf"^({NAMES}) (?:gave|handed|passed) the ({THINGS}) to ({NAMES})\.$")
REL = re.compile(rf"^The ({PLACES}) is (north|south|east|west) of the ({PLACES})\.$")
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}


def solve(lines, question):
    """Replay the facts found among ``lines`` and answer ``question``; also return how many facts were read."""
    pos, hand, floor, trail, gives, rels = {}, {}, {}, {}, [], []
    n_facts = 0
    for line in lines:
        if m := MOVE.match(line):
            pos[m[1]] = m[2]
        elif m := GRAB.match(line):
            assert m[2] not in hand, f"grabbed a held object: {line}"
            hand[m[2]] = m[1]
        elif m := DROP.match(line):
            assert hand.get(m[2]) == m[1], f"dropped an object not held: {line}"
            del hand[m[2]]
            floor[m[2]] = pos.get(m[1])
        elif m := GIVE.match(line):
            assert hand.get(m[2]) == m[1] and m[1] != m[3], f"invalid give: {line}"
            hand[m[2]] = m[3]
            gives.append((m[1], m[2], m[3]))
        elif m := REL.match(line):
            rels.append((m[1], m[2], m[3]))
        else:
            continue
        n_facts += 1
        for thing in ("apple", "football", "milk"):
            here = pos.get(hand[thing]) if thing in hand else floor.get(thing)
            if here is not None and trail.setdefault(thing, [])[-1:] != [here]:
                trail[thing].append(here)

    def where(thing):
        return pos.get(hand[thing]) if thing in hand else floor.get(thing)

    if m := re.fullmatch(rf"Where is ({NAMES})\?", question):
        return pos[m[1]], n_facts
    if m := re.fullmatch(rf"Where is the ({THINGS})\?", question):
        return where(m[1]), n_facts
    if m := re.fullmatch(rf"Where was the ({THINGS}) before the ({PLACES})\?", question):
        assert trail[m[1]][-1] == m[2] == where(m[1])
        return trail[m[1]][-2], n_facts
    if m := re.fullmatch(rf"What is (\w+) of the ({PLACES})\?", question):
        found = {a for a, d, b in rels if (d, b) == (m[1], m[2])}
        found |= {b for a, d, b in rels if (d, a) == (OPPOSITE[m[1]], m[2])}
        assert len(found) == 1
        return found.pop(), n_facts
    if m := re.fullmatch(rf"What is the ({PLACES}) (\w+) of\?", question):
        found = {b for a, d, b in rels if (a, d) == (m[1], m[2])}
        found |= {a for a, d, b in rels if (b, d) == (m[1], OPPOSITE[m[2]])}
        assert len(found) == 1
        return found.pop(), n_facts
    if m := re.fullmatch(rf"Who gave the ({THINGS}) to ({NAMES})\?", question):
        return [g for g in gives if g[1:] == (m[1], m[2])][-1][0], n_facts
    if m := re.fullmatch(rf"Who did ({NAMES}) give the ({THINGS}) to\?", question):
        return [g for g in gives if g[:2] == (m[1], m[2])][-1][2], n_facts
    if m := re.fullmatch(rf"What did ({NAMES}) give to ({NAMES})\?", question):
        return [g for g in gives if (g[0], g[2]) == (m[1], m[2])][-1][1], n_facts
    if m := re.fullmatch(rf"Who received the ({THINGS})\?", question):
        return [g for g in gives if g[1] == m[1]][-1][2], n_facts
    raise AssertionError(f"unknown question {question!r}")


LONGEST_VERSE = max(len(v) + 1 for v in kjv_splits()["test"].split(b"\n"))
STATEMENTS = {"qa1": (2, 10), "qa2": (4, 20), "qa3": (6, 30), "qa4": (2, 2), "qa5": (4, 20)}


@pytest.mark.parametrize("task", sorted(STATEMENTS))
@pytest.mark.parametrize("seq_len", [0, 1024])
def test_every_answer_matches_the_reference_simulator(task, seq_len):
    batch = babi(40, seed=7, task=task, seq_len=seq_len)
    low, high = STATEMENTS[task]
    width = batch.inputs.shape[1]
    assert batch.targets.shape == batch.inputs.shape and width >= seq_len
    assert batch.inputs.max() <= PAD_ID and batch.inputs.min() >= 0
    for i in range(40):
        row = batch.inputs[i].tolist() + [batch.targets[i, -1].item()]
        text = bytes(t for t in row if t != PAD_ID).decode()
        assert len(text) == batch.meta["lengths"][i]
        body, answer = text.rsplit("\nAnswer:", 1)
        lines = body.split("\n")
        question = lines[-1]
        expected, n_facts = solve(lines[:-1], question)
        assert low <= n_facts <= high
        assert answer == " " + expected == " " + batch.meta["answers"][i]
        assert expected in batch.meta["answer_sets"][i]
        assert batch.meta["answer_sets"][i][batch.meta["gold_index"][i]] == expected
        scored = batch.targets[i][batch.targets[i] != -100].tolist()
        assert bytes(scored).decode() == answer
        if seq_len and n_facts < len(lines) - 1:  # with background, the row fills the target up to one verse
            assert 0 <= seq_len + 1 - len(text) < LONGEST_VERSE


def test_background_is_test_split_verses_with_facts_in_order():
    batch = babi(10, seed=3, task="qa1", seq_len=2048)
    test_split = kjv_splits()["test"].decode()
    assert batch.inputs.shape == (10, 2048)
    for i in range(10):
        text = bytes(t for t in batch.inputs[i].tolist() if t != PAD_ID).decode()
        lines = text.split("\n")[:-2]
        facts = [k for k, line in enumerate(lines) if MOVE.match(line)]
        assert facts == batch.meta["fact_lines"][i]
        assert [lines[k] for k in facts] == batch.meta["stories"][i].statements
        verses = [line for k, line in enumerate(lines) if k not in facts]
        assert len(verses) > 5 and all(v + "\n" in test_split for v in verses)
    train = babi(2, seed=3, task="qa1", seq_len=1024, split="train")
    assert train.meta["split"] == "train"


def test_determinism_prompts_metric_and_errors():
    a, b = babi(8, seed=1, task="qa5", seq_len=512), babi(8, seed=1, task="qa5", seq_len=512)
    assert torch.equal(a.inputs, b.inputs) and a.meta["answers"] == b.meta["answers"]
    assert not torch.equal(a.inputs, babi(8, seed=2, task="qa5", seq_len=512).inputs)
    prompt = bytes(t for t in a.meta["prompts"][0].tolist() if t != PAD_ID).decode()
    assert prompt.endswith("\nAnswer:")
    assert babilong_match("The Kitchen. Then the garden", "kitchen")
    assert not babilong_match("It is not known. kitchen", "kitchen")
    with pytest.raises(ConfigError, match="^task:"):
        babi(1, seed=0, task="qa6")
    with pytest.raises(ConfigError, match="^seq_len:"):
        babi(1, seed=0, seq_len=-1)


def test_ranking_rows_cover_the_answer_set_and_an_oracle_scores_one():
    batch = babi(12, seed=5, task="qa5", seq_len=0)
    ranking = babi_ranking_batch(batch)
    groups = ranking.meta["groups"]
    sizes = (groups >= 0).sum(1).tolist()
    assert sizes == [len(s) for s in batch.meta["answer_sets"]] and set(sizes) == {3, 4}
    gold_rows = torch.zeros(ranking.inputs.shape[0], dtype=torch.bool)
    for i in range(12):
        for j, cand in enumerate(batch.meta["answer_sets"][i]):
            r = groups[i, j]
            assert bytes(ranking.targets[r][ranking.targets[r] != -100].tolist()).decode() == " " + cand
        gold_rows[groups[i, batch.meta["gold_index"][i]]] = True
    logits = torch.zeros(*ranking.inputs.shape, PAD_ID + 1)
    rows, cols = (ranking.label_mask & gold_rows[:, None]).nonzero(as_tuple=True)
    logits[rows, cols, ranking.targets[rows, cols]] = 30.0
    scores = group_scores(continuation_logliks(logits, ranking.targets), groups)
    assert ranking_accuracy(scores, batch.meta["gold_index"]) == 1.0
