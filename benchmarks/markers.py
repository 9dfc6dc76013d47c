"""Generated sections of the Markdown documents: the one writer of ``<!-- key:begin -->`` … ``<!-- key:end -->`` blocks.

Every benchmark that writes into docs/ (``run_all.py`` into docs/results.md and the README's results
summary, ``optimizers.py`` and ``stability.py`` into docs/results.md, ``hope_throughput.py``,
``keep_state.py`` and ``decode.py`` into docs/performance.md) replaces only its own block; all text
outside the block is kept verbatim.
"""

from __future__ import annotations

from pathlib import Path


def begin(key: str) -> str:
    return f"<!-- {key}:begin -->"


def end(key: str) -> str:
    return f"<!-- {key}:end -->"


def block(key: str, body: str) -> str:
    return f"{begin(key)}\n{body.strip()}\n{end(key)}"


def span(text: str, key: str) -> tuple[int, int] | None:
    """(start, stop) of the whole block of ``key`` in ``text``, markers included; None when absent."""
    b = text.find(begin(key))
    if b < 0:
        return None
    e = text.find(end(key), b)
    if e < 0:
        raise ValueError(f"{begin(key)} has no matching {end(key)}")
    return b, e + len(end(key))


def body(text: str, key: str) -> str | None:
    """The text between the markers of ``key`` (stripped); None when the block is absent."""
    s = span(text, key)
    return None if s is None else text[s[0] + len(begin(key)):s[1] - len(end(key))].strip()


def replace_block(text: str, key: str, new_body: str, order: tuple[str, ...] = ()) -> str:
    """Put ``block(key, new_body)`` into ``text``: in place of the old block, or else at its place in ``order``.

    A new block goes before the first later block of ``order`` present in the text, else after the
    last earlier one, else at the end. Nothing else changes.
    """
    new = block(key, new_body)
    found = span(text, key)
    if found is not None:
        return text[:found[0]] + new + text[found[1]:]
    keys = list(order) if key in order else [*order, key]
    i = keys.index(key)
    for later in keys[i + 1:]:
        s = span(text, later)
        if s is not None:
            return text[:s[0]] + new + "\n\n" + text[s[0]:]
    for earlier in reversed(keys[:i]):
        s = span(text, earlier)
        if s is not None:
            return text[:s[1]] + "\n\n" + new + text[s[1]:]
    return text.rstrip("\n") + "\n\n" + new + "\n"


def write_block(path: Path, key: str, new_body: str, *, order: tuple[str, ...] = (), heading: str = "",
                title: str = "") -> None:
    """Replace the block of ``key`` in the file at ``path`` (see :func:`replace_block`).

    A missing file starts as ``title``. A block that is new to the file goes at its place in
    ``order``, or at the end under a ``## heading`` when one is given.
    """
    text = path.read_text(encoding="utf-8") if path.exists() else title
    if heading and span(text, key) is None:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n{block(key, new_body)}\n"
    else:
        text = replace_block(text, key, new_body, order)
    path.write_text(text, encoding="utf-8")
