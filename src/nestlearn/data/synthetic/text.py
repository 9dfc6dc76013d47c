"""Byte-level text helpers of the text probes (NIAH, bAbI-style): KJV haystack lines and the key word list.

Token ids 0–255 are UTF-8 bytes (data.md §5); :data:`PAD_ID` = 256 is the one special id these
tasks add, used to left-pad prompts so that every row ends with its answer.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from functools import lru_cache

import numpy as np

from nestlearn.data.kjv import kjv_splits
from nestlearn.errors import check_choice

PAD_ID = 256
TEXT_VOCAB = 257
KJV_SPLITS = ("train", "validation", "test")


@lru_cache(maxsize=3)
def verse_lines(split: str) -> tuple[bytes, ...]:
    """The verse lines of a KJV split (data.md §1), each ending in ``b"\\n"``, in canonical order."""
    check_choice("split", split, KJV_SPLITS)
    return tuple(line + b"\n" for line in kjv_splits()[split].split(b"\n")[:-1])


@lru_cache(maxsize=1)
def word_list() -> tuple[str, ...]:
    """Key words (tasks.md §2.2): lower-case alphabetic words of 4–9 letters seen >= 5 times in the KJV train split.

    Only occurrences written in lower case count, so capitalised names are left out. Sorted, so the
    list and its hash (:func:`word_list_info`) are deterministic.
    """
    counts = Counter(re.findall(rb"[A-Za-z]+", kjv_splits()["train"]))
    return tuple(sorted(w.decode() for w, c in counts.items() if c >= 5 and 4 <= len(w) <= 9 and w.islower()))


def word_list_info() -> dict[str, object]:
    """Provenance of the key word list for run metadata: source, size and SHA-256 of the newline-joined list."""
    words = word_list()
    digest = hashlib.sha256("\n".join(words).encode()).hexdigest()
    return {"source": "kjv-train", "size": len(words), "sha256": digest}


def encode(text: str) -> np.ndarray:
    """UTF-8 bytes of ``text`` as int64 token ids."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


def window_of_lines(rng: np.random.Generator, lines: tuple[bytes, ...], budget: int) -> list[bytes]:
    """Contiguous lines from a uniform start (wrapping at the end) whose total length stays within ``budget`` bytes."""
    start = int(rng.integers(0, len(lines)))
    out: list[bytes] = []
    used = 0
    for k in range(len(lines)):
        line = lines[(start + k) % len(lines)]
        if used + len(line) > budget:
            break
        out.append(line)
        used += len(line)
    return out
