"""The evidence suite behind ``benchmarks/run_all.py``: one function per section of docs/results.md.

A section function has the signature ``section(quick: bool, out_dir: Path, seed: int = 0) -> Section``.
``quick=True`` is the smoke setting (the whole suite in about ten minutes on two CPU cores);
``quick=False`` is the CPU tier of ``docs/tasks.md``. Each writes its own artefacts
(JSON, plots) under ``out_dir`` and returns the Markdown that run_all places in docs/results.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Section:
    """Attributes:
        key: short identifier, also the marker name in docs/results.md (``<!-- key:begin -->``).
        title: the section heading.
        markdown: the body (tables, command, seeds, notes); plots referenced relative to docs/.
        data: the numbers behind the tables (saved to JSON by run_all).
    """

    key: str
    title: str
    markdown: str
    data: dict[str, Any] = field(default_factory=dict)
