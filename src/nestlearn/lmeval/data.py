"""Offline documents for the shipped lm-eval tasks (``tasks/*.yaml``), built from local sources only.

Each ``*_dataset`` function is a task's ``custom_dataset``: lm-eval calls it with the task's
``dataset_kwargs`` plus its metadata (the task's ``metadata`` block, ``--metadata`` and the model
arguments, which these builders do not use) and gets a ``datasets.DatasetDict`` with ``validation``
and ``test`` splits. Nothing is downloaded (data.md §7).

- **bits per byte per domain** (``loglikelihood_rolling``): one document per KJV book of the split
  (data.md §1), or one per CPython standard-library file of the split (data.md §2);
- **KJV cloze** (``multiple_choice``): a verse of the split, cut after half its words and read after
  the verse before it; the true rest of the verse against endings of other verses of the same split.
"""

from __future__ import annotations

import hashlib
import random
import sysconfig
from pathlib import Path
from typing import Any

from nestlearn.data.kjv import TEST_BOOKS, VALIDATION_BOOKS, kjv_books
from nestlearn.errors import ConfigError, DataError

SPLITS = ("validation", "test")
# data.md §2: directories left out of the code domain.
STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "__pycache__"})


def kjv_book_docs(split: str) -> list[dict[str, str]]:
    """The books of a KJV split as ``{"name", "text"}``, in canonical order (data.md §1)."""
    books = {"validation": VALIDATION_BOOKS, "test": TEST_BOOKS}[split]
    return [{"name": name, "text": text.decode("utf-8")} for name, text in kjv_books() if name in books]


def stdlib_split_of(relative_path: str) -> str:
    """data.md §2: k = sha256(relative POSIX path) mod 20; 0 -> test, 1 -> validation, else train."""
    k = int(hashlib.sha256(relative_path.encode("utf-8")).hexdigest(), 16) % 20
    return "test" if k == 0 else "validation" if k == 1 else "train"


def stdlib_code_docs(split: str, root: str | Path | None = None) -> list[dict[str, str]]:
    """The CPython standard-library files of a split as ``{"name", "text"}``, ordered by path (data.md §2).

    Args:
        split: "validation" or "test" (the train split is not an evaluation set).
        root: the standard-library folder; None takes ``sysconfig.get_paths()["stdlib"]``.
    """
    root = Path(root or sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root)
        if STDLIB_SKIP_DIRS.intersection(rel.parts[:-1]) or stdlib_split_of(rel.as_posix()) != split:
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path} is not UTF-8 ({err}); the code domain expects UTF-8 sources") from None
        docs.append({"name": rel.as_posix(), "text": text})
    if not docs:
        raise DataError(f"no standard-library sources of the {split} split under {root}")
    return docs


def kjv_verses(split: str) -> list[tuple[str, list[str]]]:
    """(book, verses) for each book of a KJV split; a verse is one line without its newline."""
    return [(doc["name"], doc["text"].splitlines()) for doc in kjv_book_docs(split)]


def kjv_cloze_docs(split: str, n_docs: int = 500, n_choices: int = 4, min_words: int = 8,
                   seed: int = 0) -> list[dict[str, Any]]:
    """Seeded verse-ending cloze items from a KJV split.

    A verse with at least ``min_words`` words and a verse before it in the same book is cut after
    ``len(words) // 2`` words. The context is the previous verse, a newline and the first half; the
    choices are the true second half and ``n_choices - 1`` distinct second halves of other verses of
    the split, in a seeded random order.

    Returns:
        ``n_docs`` items ``{"book", "line", "context", "choices", "label"}`` (``line`` is the verse's
        1-based line number within its book, ``label`` the index of the true ending).
    """
    if n_choices < 2:
        raise ConfigError("n_choices", f"must be >= 2, got {n_choices}")
    if min_words < 2:
        raise ConfigError("min_words", f"must be >= 2 (a verse is cut into two non-empty halves), got {min_words}")
    items = []
    for book, verses in kjv_verses(split):
        for i in range(1, len(verses)):
            words = verses[i].split(" ")
            if len(words) >= min_words:
                cut = len(words) // 2
                items.append({"book": book, "line": i + 1, "previous": verses[i - 1],
                              "stem": " ".join(words[:cut]), "ending": " ".join(words[cut:])})
    if not 1 <= n_docs <= len(items):
        raise ConfigError("n_docs", f"must lie in [1, {len(items)}] for the KJV {split} split, got {n_docs}")
    endings = sorted({it["ending"] for it in items})
    if len(endings) < n_choices:
        raise ConfigError("n_choices", f"must be <= {len(endings)} (distinct endings in the split), got {n_choices}")
    rng = random.Random(seed)
    docs = []
    for it in rng.sample(items, n_docs):
        distractors = []
        while len(distractors) < n_choices - 1:
            cand = rng.choice(endings)
            if cand != it["ending"] and cand not in distractors:
                distractors.append(cand)
        choices = [it["ending"], *distractors]
        rng.shuffle(choices)
        docs.append({"book": it["book"], "line": it["line"], "context": it["previous"] + "\n" + it["stem"],
                     "choices": choices, "label": choices.index(it["ending"])})
    return docs


def _dataset_dict(build) -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError("the lm-eval tasks need the package datasets: pip install 'nestlearn[lmeval]'") from None
    return datasets.DatasetDict({split: datasets.Dataset.from_list(build(split)) for split in SPLITS})


def kjv_bpb_dataset(**_harness_metadata: Any):
    """``custom_dataset`` of ``nestlearn_kjv_bpb``: the KJV books of the validation and test splits."""
    return _dataset_dict(kjv_book_docs)


def code_bpb_dataset(**_harness_metadata: Any):
    """``custom_dataset`` of ``nestlearn_code_bpb``: the standard-library files of the validation and test splits."""
    return _dataset_dict(stdlib_code_docs)


def kjv_cloze_dataset(n_docs: int = 500, n_choices: int = 4, min_words: int = 8, seed: int = 0,
                      **_harness_metadata: Any):
    """``custom_dataset`` of ``nestlearn_kjv_cloze`` (arguments from the task's ``dataset_kwargs``)."""
    return _dataset_dict(lambda split: kjv_cloze_docs(split, n_docs, n_choices, min_words, seed))
