"""Long-stream stability: read a token stream with the carried state, report finiteness and fast-weight norms.

Used by ``benchmarks/stability.py`` (32,768 tokens, every recurrent family, at initialisation and after
training) and by ``tests/test_long_streams.py`` (4,096 tokens). "Top gates" starts every step gate at
0.9 of its bound and every momentum gate at 0.9, the hardest start the configs allow (design.md S1–S6).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from nestlearn.config import load_yaml
from nestlearn.data.kjv import kjv_splits
from nestlearn.memory.monitor import watch
from nestlearn.models.lm import CausalLM
from nestlearn.train.config import RunConfig, load_run_config

# Rows that are another row's tiny config with other switches: DeltaNet with the signed eigenvalue
# range (design.md S2), a row wherever DeltaNet is one (the suite's ``deltanet_signed``).
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {"deltanet-signed": ("deltanet", ("model.eigen=signed",))}
# Rows whose model carries a state across calls: configs/<name>-tiny.yaml, or a VARIANTS entry.
RECURRENT = ("hope", "hope-attention", "titans", "titans-mac", "titans-mag", "titans-mal", "deltanet",
             "deltanet-signed", "gated-deltanet", "linear-attention")


def row_config(configs: Path, row: str, gates: str, overrides: Sequence[str] = ()) -> tuple[RunConfig, list[str]]:
    """The run config of a :data:`RECURRENT` row and every override applied to its tiny config.

    Args:
        configs: the repository's configs/ folder.
        gates: ``"default"`` or ``"top"`` (:func:`top_gates`).
        overrides: further ``--set`` strings, applied last.
    """
    family, switches = VARIANTS.get(row, (row, ()))
    path = configs / f"{family}-tiny.yaml"
    sets = [*switches, *(top_gates(family, load_yaml(path)["model"]) if gates == "top" else []), *overrides]
    return load_run_config(path, sets), sets


def top_gates(family: str, model: dict) -> list[str]:
    """``--set`` overrides that start every step gate at 0.9 of its bound and every momentum gate at 0.9.

    Args:
        family: a name of :data:`RECURRENT`.
        model: the config's ``model`` section as a dict (read for ``eta_max`` and ``momentum``).
    """
    if family == "hope":
        return ["model.selfmod.eta_init=0.9", "model.selfmod.beta_init=0.9", "model.cms.eta_init=0.9"]
    if family == "hope-attention":  # attention and CMS levels: the levels' step gates
        return ["model.cms.eta_init=0.9"]
    if family == "linear-attention":
        return []
    out = [f"model.eta_init={0.9 * model.get('eta_max', 1.0)}"]
    if model.get("momentum", "ema") != "none":
        out.append("model.beta_init=0.9")
    return out


def stream(kind: str, tokens: int, seed: int = 0) -> torch.Tensor:
    """(tokens,) byte ids: KJV validation then test text (``"kjv"``) or uniform random bytes (``"random"``)."""
    if kind == "kjv":
        splits = kjv_splits()
        data = splits["validation"] + splits["test"]
        return torch.from_numpy(np.frombuffer(data[:tokens], dtype=np.uint8).astype(np.int64))
    return torch.randint(0, 256, (tokens,), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def read_stream(model: CausalLM, ids: torch.Tensor, segment: int) -> dict:
    """Read ``ids`` (n,) in segments of ``segment`` tokens, the state of one starting the next.

    Returns:
        ``finite`` (every logit and fast weight), ``first_nonfinite`` (``"layer0.mem at tokens 48–63"``
        or None), ``max_norm`` (the largest fast-weight Frobenius norm) and ``max_norm_at`` (its name).
    """
    state, finite = None, True
    with watch() as mon:
        for start in range(0, len(ids), segment):
            out = model(ids[None, start:start + segment], state)
            state = out.state
            finite = finite and bool(torch.isfinite(out.logits).all())
    norms = mon.largest()
    return {"finite": finite and mon.first_nonfinite is None,
            "first_nonfinite": None if mon.first_nonfinite is None else str(mon.first_nonfinite),
            "max_norm": max(norms.values(), default=0.0),
            "max_norm_at": max(norms, key=norms.get) if norms else None}

