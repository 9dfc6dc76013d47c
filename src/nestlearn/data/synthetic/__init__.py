"""Seeded synthetic and text-probe task generators (tasks.md §1–§8).

Every generator is called as ``TASKS[name](n, seed, **params)`` and returns a
:class:`~nestlearn.data.synthetic.base.TaskBatch`; the same seed gives identical data. ``TIERS[name]``
maps "paper" and "cpu" (and, for some families, further published settings) to the task family's
sizes. Training and test data come from disjoint seed streams: ``derive_seed(seed, "train")`` and
``derive_seed(seed, "test")``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

from nestlearn.data.synthetic.babi import BABI_TASKS, BABI_TIERS, babi
from nestlearn.data.synthetic.babi import ranking_batch as babi_ranking_batch
from nestlearn.data.synthetic.base import (
    IGNORE_INDEX,
    TaskBatch,
    continuation_batch,
    derive_seed,
    verbatim_overlap,
)
from nestlearn.data.synthetic.chomsky import CHOMSKY_TASKS, CHOMSKY_TIERS, chomsky_task
from nestlearn.data.synthetic.copying import COPYING_TIERS, selective_copying
from nestlearn.data.synthetic.formal import FORMAL_TIERS, LANGUAGES, formal_language
from nestlearn.data.synthetic.induction import INDUCTION_TIERS, induction_heads
from nestlearn.data.synthetic.mad import MAD_TIERS, mad_compression, mad_memorization, mad_selective_copying
from nestlearn.data.synthetic.mad_recall import mad_fuzzy_recall, mad_recall
from nestlearn.data.synthetic.mqar import MQAR_TIERS, mqar
from nestlearn.data.synthetic.niah import NIAH_TASKS, NIAH_TIERS, niah
from nestlearn.data.synthetic.niah import ranking_batch as niah_ranking_batch
from nestlearn.errors import ConfigError, check_choice

Generator = Callable[..., TaskBatch]

TASKS: dict[str, Generator] = {
    "mqar": mqar,
    "selective_copying": selective_copying,
    "induction_heads": induction_heads,
    **{name: partial(chomsky_task, task=name) for name in CHOMSKY_TASKS},
    **{f"formal_{lang}": partial(formal_language, language=lang) for lang in LANGUAGES},
    **{name: partial(niah, task=name) for name in NIAH_TASKS},
    **{f"babi_{name}": partial(babi, task=name) for name in BABI_TASKS},
    "mad_compression": mad_compression,
    "mad_recall": mad_recall,
    "mad_noisy_recall": partial(mad_recall, noise_vocab_size=16, frac_noise=0.2, vocab_size=32),
    "mad_fuzzy_recall": mad_fuzzy_recall,
    "mad_selective_copying": mad_selective_copying,
    "mad_memorization": mad_memorization,
}

TIERS: dict[str, dict[str, Any]] = {
    "mqar": MQAR_TIERS,
    "selective_copying": COPYING_TIERS,
    "induction_heads": INDUCTION_TIERS,
    **{name: CHOMSKY_TIERS for name in CHOMSKY_TASKS},
    **{f"formal_{lang}": FORMAL_TIERS for lang in LANGUAGES},
    **{name: NIAH_TIERS for name in NIAH_TASKS},
    **{f"babi_{name}": BABI_TIERS for name in BABI_TASKS},
    **MAD_TIERS,
}


def generate(name: str, n: int, seed: int, **params: Any) -> TaskBatch:
    """``TASKS[name](n, seed, **params)``; an unknown name raises a ConfigError that lists the task names."""
    check_choice("task", name, sorted(TASKS))
    allowed = [p for p in inspect.signature(TASKS[name]).parameters if p not in ("n", "seed", "task", "language")]
    for key in params:
        if key not in allowed:
            raise ConfigError(f"{name}.{key}", f"unknown parameter; allowed: {', '.join(allowed)}")
    return TASKS[name](n, seed, **params)


__all__ = ["IGNORE_INDEX", "TASKS", "TIERS", "TaskBatch", "babi", "babi_ranking_batch", "chomsky_task",
           "continuation_batch", "derive_seed", "formal_language", "generate",
           "induction_heads", "mad_compression", "mad_fuzzy_recall", "mad_memorization", "mad_recall",
           "mad_selective_copying", "mqar", "niah", "niah_ranking_batch", "selective_copying",
           "verbatim_overlap"]
