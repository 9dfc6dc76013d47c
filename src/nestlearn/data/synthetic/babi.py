"""bAbI-style stories (qa1–qa5) and BABILong-style haystacks (tasks.md §3).

The bAbI files are not available offline, so the stories come from this project's own generator;
label results "bAbI-style", never bAbI. A row is byte-level text: the context (story facts, one per
line, hidden among KJV verse lines when ``seq_len > 0``), then ``{question}\\nAnswer:`` and the
one-word answer, left-padded with :data:`PAD_ID`. Only the answer bytes are scored.

[project] readings of tasks.md §3.1 where it is silent: grabs and gives need no co-location (only
the object's free/held state is checked), a move may name the actor's current location, an object
held by an actor whose location is unknown has an unknown location, and a story whose question
cannot be asked (no known object location, no history of two locations, no give) is redrawn.
"""

from __future__ import annotations

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
)
from nestlearn.errors import check_choice

ACTORS = ("John", "Mary", "Sandra", "Daniel")
ACTORS_QA5 = ("Bill", "Fred", "Jeff", "Mary")
LOCATIONS = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
OBJECTS = ("apple", "football", "milk")
DIRECTIONS = ("north", "south", "east", "west")
INVERSE = {"north": "south", "south": "north", "east": "west", "west": "east"}
MOVE_VERBS = ("went to", "journeyed to", "travelled to", "moved to", "went back to")
GRAB_VERBS = ("picked up", "got", "grabbed", "took")
DROP_VERBS = ("dropped", "discarded", "put down", "left")
GIVE_VERBS = ("gave", "handed", "passed")
BABI_TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")
# Statement mix of qa5 [project: tasks.md names the kinds, not their shares].
QA5_MIX = {"move": 0.4, "grab": 0.3, "give": 0.3}


@dataclass(frozen=True)
class BabiTier:
    """Sizes of one BABILong-style tier; a length of 0 is the story alone."""

    tasks: tuple[str, ...]
    lengths: tuple[int, ...]
    samples_per_cell: int


BABI_TIERS: dict[str, BabiTier] = {
    "paper": BabiTier(tasks=BABI_TASKS, lengths=(0, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072),
                      samples_per_cell=100),
    "cpu": BabiTier(tasks=BABI_TASKS, lengths=(0, 256, 512, 1024, 2048, 4096), samples_per_cell=100),
}


@dataclass
class Story:
    """One sample before tokenisation. ``answer_set`` is the candidate list of the ranking metric."""

    statements: list[str]
    question: str
    answer: str
    answer_set: tuple[str, ...]


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(0, len(options)))]


def _qa1(rng: np.random.Generator) -> Story:
    where: dict[str, str] = {}
    statements = []
    for _ in range(int(rng.integers(2, 11))):
        actor, loc = _pick(rng, ACTORS), _pick(rng, LOCATIONS)
        statements.append(f"{actor} {_pick(rng, MOVE_VERBS)} the {loc}.")
        where[actor] = loc
    actor = _pick(rng, sorted(where))
    return Story(statements, f"Where is {actor}?", where[actor], LOCATIONS)


class _World:
    """Actors' locations, who holds what, where dropped objects lie, and each object's location history."""

    def __init__(self, actors: tuple[str, ...]):
        self.actors = actors
        self.where: dict[str, str | None] = {a: None for a in actors}
        self.holder: dict[str, str | None] = {o: None for o in OBJECTS}
        self.dropped_at: dict[str, str | None] = {o: None for o in OBJECTS}
        self.history: dict[str, list[str]] = {o: [] for o in OBJECTS}

    def object_location(self, obj: str) -> str | None:
        holder = self.holder[obj]
        return self.where[holder] if holder is not None else self.dropped_at[obj]

    def random_statement(self, rng: np.random.Generator, mix: dict[str, float]) -> tuple[str, tuple[str, ...]]:
        """Draw (kind, args) until valid: only free objects are grabbed, only held ones dropped or given."""
        kinds, probs = list(mix), np.array(list(mix.values()))
        while True:
            kind = kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))]
            actor, obj = _pick(rng, self.actors), _pick(rng, OBJECTS)
            if kind == "move":
                return kind, (actor, _pick(rng, LOCATIONS))
            if kind == "grab" and self.holder[obj] is None:
                return kind, (actor, obj)
            if kind == "drop" and self.holder[obj] == actor:
                return kind, (actor, obj)
            if kind == "give" and self.holder[obj] == actor:
                other = _pick(rng, [a for a in self.actors if a != actor])
                return kind, (actor, obj, other)

    def apply(self, kind: str, args: tuple[str, ...]) -> None:
        if kind == "move":
            self.where[args[0]] = args[1]
        elif kind == "grab":
            self.holder[args[1]] = args[0]
        elif kind == "drop":
            self.holder[args[1]] = None
            self.dropped_at[args[1]] = self.where[args[0]]
        else:
            self.holder[args[1]] = args[2]
        for obj in OBJECTS:
            loc = self.object_location(obj)
            if loc is not None and (not self.history[obj] or self.history[obj][-1] != loc):
                self.history[obj].append(loc)


def _sentence(rng: np.random.Generator, kind: str, args: tuple[str, ...]) -> str:
    if kind == "move":
        return f"{args[0]} {_pick(rng, MOVE_VERBS)} the {args[1]}."
    if kind == "grab":
        return f"{args[0]} {_pick(rng, GRAB_VERBS)} the {args[1]}."
    if kind == "drop":
        return f"{args[0]} {_pick(rng, DROP_VERBS)} the {args[1]}."
    return f"{args[0]} {_pick(rng, GIVE_VERBS)} the {args[1]} to {args[2]}."


def _objects_story(rng: np.random.Generator, low: int, high: int) -> tuple[list[str], _World]:
    world = _World(ACTORS)
    statements = []
    for _ in range(int(rng.integers(low, high + 1))):
        kind, args = world.random_statement(rng, {"move": 0.6, "grab": 0.2, "drop": 0.2})
        statements.append(_sentence(rng, kind, args))
        world.apply(kind, args)
    return statements, world


def _qa2(rng: np.random.Generator) -> Story:
    while True:  # redraw stories where no object's location is known
        statements, world = _objects_story(rng, 4, 20)
        known = [o for o in OBJECTS if world.object_location(o) is not None]
        if known:
            obj = _pick(rng, known)
            return Story(statements, f"Where is the {obj}?", world.object_location(obj), LOCATIONS)


def _qa3(rng: np.random.Generator) -> Story:
    while True:  # redraw stories where no object has moved between two known locations
        statements, world = _objects_story(rng, 6, 30)
        ok = [o for o in OBJECTS if len(world.history[o]) >= 2 and world.object_location(o) == world.history[o][-1]]
        if ok:
            obj = _pick(rng, ok)
            here, before = world.history[obj][-1], world.history[obj][-2]
            return Story(statements, f"Where was the {obj} before the {here}?", before, LOCATIONS)


def _implied(facts: list[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    """(a, dir, b) meaning "a is dir of b": the stated facts, their inverses and same-direction chains."""
    out = set(facts) | {(b, INVERSE[d], a) for a, d, b in facts}
    out |= {(a, d, c) for a, d, b in out for b2, d2, c in out if b2 == b and d2 == d and a != c}
    return out


def _qa4(rng: np.random.Generator) -> Story:
    while True:  # redraw until no question about the two relations has a second answer
        x, shared, z = (LOCATIONS[i] for i in rng.choice(len(LOCATIONS), size=3, replace=False))
        facts = []
        for other in (x, z):
            d = _pick(rng, DIRECTIONS)
            facts.append((other, d, shared) if rng.random() < 0.5 else (shared, d, other))
        closure = _implied(facts)
        by_anchor = {(d, b) for _, d, b in closure}
        by_subject = {(a, d) for a, d, _ in closure}
        if len(by_anchor) == len(closure) == len(by_subject):
            break
    if rng.random() < 0.5:
        facts.reverse()
    a, d, b = facts[int(rng.integers(0, 2))]
    statements = [f"The {p} is {q} of the {r}." for p, q, r in facts]
    if rng.random() < 0.5:
        return Story(statements, f"What is {d} of the {b}?", a, LOCATIONS)
    return Story(statements, f"What is the {a} {d} of?", b, LOCATIONS)


def _qa5(rng: np.random.Generator) -> Story:
    while True:  # redraw stories without a give
        world = _World(ACTORS_QA5)
        statements, gives = [], []
        for _ in range(int(rng.integers(4, 21))):
            kind, args = world.random_statement(rng, QA5_MIX)
            statements.append(_sentence(rng, kind, args))
            world.apply(kind, args)
            if kind == "give":
                gives.append(args)
        if gives:
            break
    giver, obj, receiver = gives[int(rng.integers(0, len(gives)))]
    form = int(rng.integers(0, 4))

    def latest(match) -> tuple[str, str, str]:
        return [g for g in gives if match(g)][-1]

    if form == 0:
        answer = latest(lambda g: g[1] == obj and g[2] == receiver)[0]
        return Story(statements, f"Who gave the {obj} to {receiver}?", answer, ACTORS_QA5)
    if form == 1:
        answer = latest(lambda g: g[0] == giver and g[1] == obj)[2]
        return Story(statements, f"Who did {giver} give the {obj} to?", answer, ACTORS_QA5)
    if form == 2:
        answer = latest(lambda g: g[0] == giver and g[2] == receiver)[1]
        return Story(statements, f"What did {giver} give to {receiver}?", answer, OBJECTS)
    answer = latest(lambda g: g[1] == obj)[2]
    return Story(statements, f"Who received the {obj}?", answer, ACTORS_QA5)


_STORIES = {"qa1": _qa1, "qa2": _qa2, "qa3": _qa3, "qa4": _qa4, "qa5": _qa5}


def ranking_batch(batch: TaskBatch) -> TaskBatch:
    """The ranking metric's rows for a bAbI-style batch: the prompt followed by " {candidate}", per answer-set entry.

    Score the rows with :func:`nestlearn.eval.metrics.continuation_logliks`, arrange them with
    ``group_scores(scores, meta["groups"])`` (B, C_max; qa5's "what" questions have 3 candidates,
    the rest padded with -inf) and pass that with ``batch.meta["gold_index"]`` to
    :func:`nestlearn.eval.metrics.ranking_accuracy`.
    """
    prompts = [row[row != PAD_ID].numpy() for row in batch.meta["prompts"]]
    items = [[(prompt, encode(" " + cand)) for cand in cands]
             for prompt, cands in zip(prompts, batch.meta["answer_sets"])]
    return continuation_batch(items, PAD_ID, TEXT_VOCAB)


def babi(n: int, seed: int, *, task: str = "qa1", seq_len: int = 0, split: str = "test") -> TaskBatch:
    """Generate n bAbI-style samples, optionally BABILong-style inside KJV background (tasks.md §3).

    With ``seq_len > 0`` the facts go, in order, into sorted uniform gaps between contiguous verse
    lines from a uniform start, filled until the row (context, question, answer) reaches seq_len + 1
    bytes. A story that does not fit gets no background and is longer than ``seq_len``, as at
    length 0; the batch is then as wide as its longest row (``meta["lengths"]``).

    Args:
        n: number of samples.
        seed: seed of the generator's own RNG.
        task: "qa1" … "qa5".
        seq_len: target input length in bytes; 0 for the story alone.
        split: KJV split of the background: "test" for evaluation, "train" for training data.

    Returns:
        TaskBatch with inputs/targets (n, T) over :data:`TEXT_VOCAB` ids, T = max(seq_len, longest
        row − 1); the targets are the answer bytes " {answer}". ``meta``: ``task``, ``split``,
        ``seq_len``, ``stories`` (list of :class:`Story`), ``answers`` (list of str),
        ``answer_sets`` (list of candidate tuples), ``gold_index`` (n,) int64 index of the answer in
        its set, ``prompts`` (n, P) left-padded ids up to and including ``Answer:``, ``lengths``
        (n,) true row lengths in bytes (before the shift), ``fact_lines`` (list of n lists: line
        index of each fact in the context).
    """
    check_choice("task", task, BABI_TASKS)
    check_choice("split", split, KJV_SPLITS)
    n = check_int("n", n, 1)
    seq_len = check_int("seq_len", seq_len, 0)
    rng = make_rng(seed)
    lines = verse_lines(split) if seq_len > 0 else ()
    stories, rows, prompts, fact_lines = [], [], [], []
    for _ in range(n):
        story = _STORIES[task](rng)
        facts = [s + "\n" for s in story.statements]
        tail = f"{story.question}\nAnswer:"
        answer = " " + story.answer
        budget = seq_len + 1 - sum(len(f) for f in facts) - len(tail) - len(answer)
        background = [line.decode("utf-8") for line in window_of_lines(rng, lines, budget)] if budget > 0 else []
        slots = np.sort(rng.integers(0, len(background) + 1, size=len(facts)))
        context: list[str] = []
        positions = []
        cursor = 0
        for fact, slot in zip(facts, slots):
            context.extend(background[cursor:slot])
            cursor = int(slot)
            positions.append(len(context))
            context.append(fact)
        context.extend(background[cursor:])
        prompt = encode("".join(context) + tail)
        stories.append(story)
        prompts.append(prompt)
        rows.append(np.concatenate([prompt, encode(answer)]))
        fact_lines.append(positions)
    lengths = np.array([len(r) for r in rows])
    width = max(seq_len + 1, int(lengths.max()))
    seq = pad_left(rows, PAD_ID, width)
    answer_lens = np.array([len(s.answer) + 1 for s in stories])
    targets = seq[:, 1:].copy()
    targets[np.arange(width - 1)[None, :] < (width - 1 - answer_lens)[:, None]] = IGNORE_INDEX
    return TaskBatch(
        inputs=torch.from_numpy(np.ascontiguousarray(seq[:, :-1])), targets=torch.from_numpy(targets),
        vocab_size=TEXT_VOCAB, num_classes=TEXT_VOCAB,
        meta={"task": task, "split": split, "seq_len": seq_len, "stories": stories,
              "answers": [s.answer for s in stories], "answer_sets": [s.answer_set for s in stories],
              "gold_index": torch.tensor([s.answer_set.index(s.answer) for s in stories]),
              "prompts": torch.from_numpy(pad_left(prompts, PAD_ID)), "lengths": torch.from_numpy(lengths),
              "fact_lines": fact_lines})
