"""Helpers shared by the task sections of the evidence suite (formal, mqar, niah, babi).

Every family is built at the suite's size with the settings of the D22 "tiny" configs
(configs/*-tiny.yaml): memory chunks of 16 tokens, CMS levels every 64 / 32 / 16 tokens, and
Hope's ``selfmod.chunk_size_other = 16`` [Interp, project choice]. Every inner step runs at its
family's defaults: the stability switches of docs/design.md (S1–S5) replaced the bounds the suite
used to need (Hope at η_max = 0.3, Titans at η_max = 0.02), which kept Hope's memory from learning.
A *variant* is a family with other switches, shown as its own row: ``deltanet_signed`` is DeltaNet
with the signed eigenvalue range (design.md S2), ``hope_formal`` Hope as configs/hope-formal.yaml.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from nestlearn.config import from_dict
from nestlearn.data.synthetic.base import TaskBatch
from nestlearn.eval.tasks import fit_task, task_loss, task_model
from nestlearn.memory import chunk_compile_backend, compile_chunk_step
from nestlearn.models.lm import CausalLM, LMConfig, families

NAMES = {"lstm": "LSTM", "transformer": "Transformer++", "titans": "Titans", "deltanet": "DeltaNet",
         "deltanet_signed": "DeltaNet (signed)", "gated_deltanet": "Gated DeltaNet", "hope": "Hope",
         "hope_formal": "Hope (formal config)", "hope_attention": "Hope-Attention"}

_FAMILY_SETTINGS: dict[str, dict[str, Any]] = {
    "titans": {"chunk_size": 16},
    "deltanet": {"chunk_size": 16},
    "gated_deltanet": {"chunk_size": 16},
    "hope": {"selfmod": {"chunk_size_memory": 16, "chunk_size_other": 16}, "cms": {"chunk_sizes": [64, 32, 16]}},
    "hope_attention": {"cms": {"chunk_sizes": [64, 32, 16]}},
}
# Row name -> (family, switches on top of the family's suite settings). ``hope_formal`` is the model
# section of configs/hope-formal.yaml (docs/design.md S8).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "deltanet_signed": ("deltanet", {"eigen": "signed"}),
    "hope_formal": ("hope", {"selfmod": {"momentum": "off", "chunk_size_other": 128},
                             "cms": {"chunk_sizes": [512], "level_form": "mlp"}}),
}


def suite_config(name: str, d_model: int, n_layers: int, max_seq_len: int) -> LMConfig:
    """The config of row ``name`` (a family or a :data:`VARIANTS` key) used by every task section."""
    family, switches = VARIANTS.get(name, (name, {}))
    data = {"d_model": d_model, "n_layers": n_layers, "max_seq_len": max_seq_len, **_FAMILY_SETTINGS.get(family, {})}
    for key, value in switches.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return from_dict(families()[family], data, prefix="model")


# Sizes every section states in its protocol line; the settings line lists only the other differences.
# tasks.md §1: below UNINFORMATIVE at the easiest setting no baseline has learned the task, so a
# section ranks nothing there; below LEARNED the best model is named but the section says so.
UNINFORMATIVE, LEARNED = 0.5, 0.9
# Rows that are not baselines: the bar is set by the strongest of the others.
HOPE_ROWS = ("hope", "hope_attention", "hope_formal")
_SIZE_FIELDS = ("d_model", "n_layers", "max_seq_len", "vocab_size")


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def non_default_settings(name: str) -> dict[str, Any]:
    """The fields of row ``name``'s suite config that differ from its family's library defaults
    (dotted names, sizes left out): what a reader needs to rebuild the row from the library."""
    family, _ = VARIANTS.get(name, (name, {}))
    default = _flat(asdict(families()[family]()))
    used = _flat(asdict(suite_config(name, 64, 2, 128)))
    return {k: v for k, v in used.items() if k not in _SIZE_FIELDS and default.get(k) != v}


def settings_line(names: Sequence[str]) -> str:
    """One Markdown bullet naming every row's settings that differ from the library defaults."""
    parts = []
    for name in names:
        diff = non_default_settings(name)
        text = ", ".join(f"{k} = {list(v) if isinstance(v, tuple) else v}" for k, v in diff.items())
        parts.append(f"{NAMES[name]}: {text or 'library defaults'}")
    return "- Settings that differ from the library defaults (besides the sizes above): " + "; ".join(parts) + "."


def suite_model(name: str, d_model: int, n_layers: int, max_seq_len: int, example: TaskBatch,
                seed: int) -> CausalLM:
    """A freshly initialised model of row ``name`` (``torch.manual_seed(seed)``) sized for the task of ``example``."""
    torch.manual_seed(seed)
    return task_model(suite_config(name, d_model, n_layers, max_seq_len), example)


def pick_settings(table: dict[str, Any], quick: bool, settings: Any | None, models: Sequence[str] | None) -> Any:
    """``settings``, else the "quick" or "full" entry of ``table``; its rows cut to ``models`` when given."""
    s = settings or table["quick" if quick else "full"]
    return replace(s, models=tuple(models)) if models else s


def command(key: str, quick: bool, seed: int) -> str:
    """The command that reproduces one section."""
    return f"python benchmarks/run_all.py --only {key}{' --quick' if quick else ''} --seed {seed}"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaNs propagate."""
    vals = list(values)
    if len(vals) == 1:
        return vals[0], 0.0
    return statistics.fmean(vals), statistics.stdev(vals)


def pct(mean: float, std: float | None = None) -> str:
    """A percentage cell: ``97.2`` or ``97.2 ± 1.3``; ``nan`` for a missing value."""
    if math.isnan(mean):
        return "nan"
    text = f"{100 * mean:.1f}"
    return text if not std else f"{text} ± {100 * std:.1f}"


def calibration(score: float, where: str) -> tuple[str, bool]:
    """The verdict on whether a task can rank models from its strongest baseline's score at the
    easiest setting (tasks.md §1), and whether it may: below 50 % uninformative (no ranking), below
    90 % tentative, else learned. ``where`` names the baseline and its score; a comparison in which no
    baseline learns the task says nothing about Hope."""
    if not score >= UNINFORMATIVE:
        return f"**uninformative at this budget**: {where}, below {pct(UNINFORMATIVE)} %; no ranking", False
    if score < LEARNED:
        return f"below the {pct(LEARNED)} % bar: {where}; the ranking is tentative", True
    return f"learned: {where} (bar {pct(LEARNED)} %)", True


def nonfinite(losses: Sequence[float]) -> int:
    """How many training steps had a non-finite loss (skipped by fit_task)."""
    return sum(not math.isfinite(x) for x in losses)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON through a temporary file, so an interrupted run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def behaviour_digest(model: CausalLM, batch: TaskBatch, lr: float, steps: int = 2) -> str:
    """A digest of what the code computes for one cell: the model's config, its first training batch,
    the losses of ``steps`` AdamW steps on it and the trained model's loss on it, to 4 significant digits.

    Keying a cell by this digest beside its settings reruns it exactly when a code change alters
    what it computes (model, initialisation, data generator, training loop), and keeps it when the
    change does not. Four digits absorb the last-bit differences between CPUs and thread counts.
    The config is part of the key because a switch can leave the first steps unchanged and still
    change the run (a write bound that binds only once the weights have grown).
    ``model`` is trained in place: pass a fresh copy.
    """
    config = json.dumps(asdict(model.config), sort_keys=True, default=str)
    losses = fit_task(model, lambda _: batch, steps, lr, clip=1.0)
    model.eval()
    with torch.no_grad():
        losses.append(task_loss(model, batch).item())
    data = [batch.inputs, batch.targets] + ([] if batch.target_sets is None else [batch.target_sets])
    text = (config + "|" + "|".join(t.cpu().numpy().tobytes().hex() for t in data) + "|"
            + ",".join(f"{v:.4g}" for v in losses))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cached(path: Path, settings: dict[str, Any], ignore: tuple[str, ...],
            digest: str | None = None) -> dict[str, Any] | None:
    """The stored result of a cell run with the same settings (up to the ``ignore`` fields) and, when
    ``digest`` is given, the same behaviour digest; else None."""
    if not path.is_file():
        return None
    stored = json.loads(path.read_text(encoding="utf-8"))
    if digest is not None and stored.get("digest") != digest:
        return None

    def key(s: dict[str, Any] | None) -> dict[str, Any] | None:
        # Round-trip through JSON so tuples compare equal to the stored lists.
        return None if s is None else {k: v for k, v in json.loads(json.dumps(s)).items() if k not in ignore}

    return stored["result"] if key(stored.get("settings")) == key(settings) else None


def worker_setup(threads: int, backend: str | None) -> None:
    """A spawned worker's settings, passed on from the process that starts it: its torch threads and
    whether the memories' chunk steps are compiled (:func:`nestlearn.memory.compile_chunk_step`)."""
    torch.set_num_threads(threads)
    compile_chunk_step(backend)


def worker_settings() -> tuple[int, str | None]:
    """This process's arguments for :func:`worker_setup`."""
    return torch.get_num_threads(), chunk_compile_backend()


def run_cells(fn: Callable[..., dict[str, Any]], cells: dict[str, tuple], settings: dict[str, Any],
              cache_dir: Path, jobs: int = 1, desc: str = "cells",
              ignore: tuple[str, ...] = (),
              digest: Callable[..., str] | None = None, stored_only: bool = False) -> dict[str, dict[str, Any]]:
    """``fn(*args)`` for every ``name -> args`` of ``cells``; resumable and optionally parallel.

    Each result is stored as ``cache_dir/<name>.json`` together with ``settings``; a later call with
    the same settings, apart from the fields in ``ignore`` (those that only choose which cells run,
    such as the list of models), reuses it, so an interrupted run continues where it stopped and a
    run of a subset reuses the cells it shares. With ``digest`` (``digest(*args)``, e.g. built on
    :func:`behaviour_digest`) the key also holds what the code computes for the cell, so a code
    change that alters a result reruns that cell; without it the key is the settings alone and a
    changed model needs its cells deleted by hand. ``stored_only`` trains nothing: the result holds
    only the cells already stored (to report a run that is still going). With ``jobs > 1``
    the cells run in that many spawned processes with the caller's torch thread count and chunk
    compilation (:func:`worker_setup`); every cell
    seeds its own model, so the results do not depend on ``jobs``. ``fn`` must be importable
    (module level) for the processes to find it.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs}")
    path = {name: cache_dir / (name.replace("/", "_") + ".json") for name in cells}
    digests = {name: None if digest is None else digest(*args) for name, args in cells.items()}
    done = {name: r for name in cells if (r := _cached(path[name], settings, ignore, digests[name])) is not None}
    todo = [] if stored_only else [name for name in cells if name not in done]
    bar = tqdm(total=len(cells), initial=len(done), desc=desc, unit="run", dynamic_ncols=True)

    def store(name: str, result: dict[str, Any]) -> None:
        write_json(path[name], {"settings": settings, "result": result,
                                **({} if digests[name] is None else {"digest": digests[name]})})
        done[name] = result
        bar.set_postfix_str(name)
        bar.update(1)

    if jobs == 1:
        for name in todo:
            store(name, fn(*cells[name]))
    elif todo:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=ctx, initializer=worker_setup,
                                 initargs=worker_settings()) as pool:
            futures = {pool.submit(fn, *cells[name]): name for name in todo}
            for future in as_completed(futures):
                store(futures[future], future.result())
    bar.close()
    return {name: done[name] for name in cells if name in done}


def pyplot():
    """matplotlib.pyplot with the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
