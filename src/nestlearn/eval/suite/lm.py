"""Language modelling on the built-in corpus: Hope against its baselines, its ablations and the CMS signals.

Three tables, all byte-level KJV (data.md §1), equal tokens for every row, validation bits per byte:

* **models**: Transformer++, Titans, Gated DeltaNet, Hope-Attention and Hope at equal non-embedding parameters
  (each family's width, then its MLP hidden width, is searched to match the budget's count to a fraction
  of a percent; NL-L Table 2 is the paper's counterpart);
* **ablations**: Hope with each Table-6 switch flipped (NL-L §9.6, spec §9.8), plus the literal
  spec's unnormalised v (``selfmod.v_norm = "none"``; the project's default is ``"l2"``) and each
  stability and range switch of docs/design.md (S1–S5) set back to the paper's literal reading;
* **signals**: the three CMS update signals of D13 (``kv``, ``lss``, ``optimizer``) over several
  seeds, scored by the decision rule of D13 (:func:`choose_cms_signal`).

Every row is scored twice on the same validation tokens: with the fast state reset per window (the
pre-training setting, D18) and, for recurrent models, carried across windows
(:func:`~nestlearn.eval.lm.evaluate_bpb_carried`). Each row also reports training tokens per second
and the peak resident memory of the process that trained it (each row runs in a fresh process).
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import math
import multiprocessing
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from nestlearn.eval.suite import Section
from nestlearn.eval.suite.common import run_cells, worker_settings, worker_setup
from nestlearn.memory import chunk_compile_backend
from nestlearn.models.lm import match_parameters, model_config_to_dict

SIGNALS = ("kv", "lss", "optimizer")
TABLES = ("models", "ablations", "signals")

# Table 6 of NL-L (spec §9.8): average perplexity / accuracy of the 1.3B models.
PAPER_TABLE6 = {"hope": (12.24, 58.1), "no_dgd": (13.41, 56.5), "no_momentum": (13.58, 56.9),
                "no_weight_decay": (13.71, 57.2), "no_cms": (13.04, 57.3), "static_k": (13.77, 56.9),
                "static_v": (13.90, 55.1)}
# Table 2 of NL-L (spec §9.1): WikiText perplexity at 760M parameters / 30B tokens.
PAPER_WIKI_760M = {"transformer": 24.18, "titans": 20.08, "hope": 18.68}

ABLATIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("no_dgd", "w/o DGD (plain GD)", {"selfmod": {"inner_rule": "gd"}}),
    ("no_momentum", "w/o momentum", {"selfmod": {"momentum": "off"}}),
    ("no_weight_decay", "w/o weight decay", {"selfmod": {"weight_decay": False}}),
    ("no_cms", "w/o CMS", {"use_cms": False}),
    ("static_k", "w/o inner-projection k (static k)", {"selfmod": {"adaptive_k": False}}),
    ("static_v", "w/o inner-projection v (static v)", {"selfmod": {"adaptive_v": False}}),
    ("static_q", "w/o inner-projection q (static q)", {"selfmod": {"adaptive_q": False}}),
    ("v_norm_none", "v_norm = none (spec §5.7 literally; the default is l2)", {"selfmod": {"v_norm": "none"}}),
    # Not Table 6: the stability and range switches (docs/design.md S1–S5) at the paper's reading.
    ("momentum_scaled", "momentum S ← βS + g (S1 'scaled')", {"selfmod": {"momentum_form": "scaled"}}),
    ("eigen_positive", "step range (0, 1] (S2 'positive')", {"selfmod": {"eigen": "positive"}}),
    ("step_norm_none", "no per-weight step normalisation (S3)", {"selfmod": {"step_norm": "none"}}),
    ("no_write_bound", "no write bound (S5)", {"selfmod": {"write_bound": 0.0}}),
    ("retain_zero", "retention toward zero (S4 'zero', the paper's Eq 88)", {"selfmod": {"retain": "zero"}}),
)


@dataclass(frozen=True)
class Budget:
    """Model size and training budget shared by every row.

    Attributes:
        d_model, n_layers: Hope's size where ``parameters`` is None, and every family's depth.
        parameters: the non-embedding parameter count every models-table family is matched to (Hope
            too, through its CMS hidden width); None: Hope's count at ``d_model``. A fixed count keeps
            the baselines' rows (and their stored cells) unchanged when a Hope default changes its size.
        seq_len, batch_size, steps, warmup_steps, lr: training (AdamW, weight decay 0.1, cosine); ``lr``
            is the rate of the ablation and signal rows.
        lrs: the models table's learning-rate grid: every family trains its first seed at each rate,
            and its other seeds at the rate that gave the lowest validation bpb (issue 15's fair tuning).
        eval_tokens: validation targets scored per row.
        seeds: seeds of the model rows (three for the headline comparison).
        ablation_seeds: seeds of the ablation rows.
        signal_seeds: seeds of the CMS-signal rows (D13 asks for 3).
        chunk_sizes: Hope's CMS chunk sizes for the kv and lss signals (D13: (256, 64, 16) at length 512).
        step_periods: the CMS step periods for the optimizer signal (D16).
        selfmod_chunks: (chunk_size_memory, chunk_size_other) of the self-modifying memory (D4).
        threads: torch threads per row (one: at these widths a second thread costs more than it saves).
    """

    d_model: int
    n_layers: int
    seq_len: int
    batch_size: int
    steps: int
    warmup_steps: int
    lr: float
    eval_tokens: int
    seeds: tuple[int, ...]
    signal_seeds: tuple[int, ...]
    chunk_sizes: tuple[int, ...]
    step_periods: tuple[int, ...] = (16, 4, 1)
    ablation_seeds: tuple[int, ...] = (0,)
    selfmod_chunks: tuple[int, int] = (16, 64)
    threads: int = 1
    lrs: tuple[float, ...] = (3e-3,)
    parameters: int | None = None


QUICK = Budget(d_model=48, n_layers=2, seq_len=64, batch_size=4, steps=40, warmup_steps=5, lr=3e-3,
               eval_tokens=4096, seeds=(0,), signal_seeds=(0,), chunk_sizes=(32, 16, 8), selfmod_chunks=(8, 16))
FULL = Budget(d_model=64, n_layers=2, seq_len=512, batch_size=4, steps=1000, warmup_steps=100, lr=3e-3,
              eval_tokens=32768, seeds=(0, 1, 2), signal_seeds=(0, 1, 2), chunk_sizes=(256, 64, 16),
              # 1e-2 and 2e-2: the best rate of three families was the top of the grid before each
              lrs=(1e-3, 3e-3, 6e-3, 1e-2, 2e-2),
              parameters=339_000)


@dataclass(frozen=True)
class Row:
    """One training run: ``key`` names it within its ``table``; ``model`` is the full model config dict;
    ``lr`` overrides the budget's learning rate (the models table's grid)."""

    table: str
    key: str
    label: str
    model: dict[str, Any]
    seed: int
    lr: float | None = None

    @property
    def name(self) -> str:
        return f"{self.table}/{self.key}/{self.seed}" + ("" if self.lr is None else f"/{self.lr:g}")


def hope_model(budget: Budget, **overrides: Any) -> dict[str, Any]:
    """Hope's model config for ``budget`` (matched to ``budget.parameters`` when set) with nested
    ``overrides`` merged in."""
    model = json.loads(_hope_base(budget))
    for key, value in overrides.items():
        model[key] = {**model.get(key, {}), **value} if isinstance(value, dict) else value
    return model


@functools.lru_cache(maxsize=8)
def _hope_base(budget: Budget) -> str:
    """Hope's model config for ``budget`` as JSON (cached: matching builds several models)."""
    model: dict[str, Any] = {"family": "hope", "d_model": budget.d_model, "n_layers": budget.n_layers,
                             "max_seq_len": budget.seq_len,
                             "selfmod": {"chunk_size_memory": budget.selfmod_chunks[0],
                                         "chunk_size_other": budget.selfmod_chunks[1]},
                             "cms": {"chunk_sizes": list(budget.chunk_sizes)}}
    if budget.parameters is not None:
        model = match_parameters(model, budget.parameters)[0]
    return json.dumps(model)


def non_embedding_parameters(model: dict[str, Any], vocab_size: int = 256) -> int:
    from nestlearn.models.lm import CausalLM, model_config_from_dict

    return CausalLM(model_config_from_dict({**model, "vocab_size": vocab_size})).num_parameters(non_embedding=True)


def mlp_hidden(model: dict[str, Any]) -> int:
    """The hidden width of the MLP after each mixer of a model config dict: the SwiGLU's, or each CMS level's."""
    from nestlearn.layers.mlp import swiglu_hidden
    from nestlearn.models.lm import model_config_from_dict

    cfg = model_config_from_dict({**model, "vocab_size": 256})
    if hasattr(cfg, "ffn_hidden"):
        return cfg.ffn_hidden or swiglu_hidden(cfg.d_model)
    if getattr(cfg, "use_cms", True) and hasattr(cfg, "cms"):
        return cfg.cms.hidden or cfg.cms.hidden_mult * cfg.d_model
    return swiglu_hidden(cfg.d_model)


def plan(budget: Budget, best: dict[str, float] | None = None) -> list[Row]:
    """Every row of the three tables, in the order they run.

    The models table holds each family's first seed at every rate of ``budget.lrs`` and, for the
    families in ``best`` (family -> chosen rate), its other seeds at that rate. The ablation and signal
    rows train at Hope's chosen rate, so that each compares with the Hope it varies (``budget.lr``
    while Hope's rate is not known).
    """
    hope = hope_model(budget)
    target = budget.parameters or non_embedding_parameters(hope)
    models = []
    for family, label in (("transformer", "Transformer++"), ("titans", "Titans"), ("gated_deltanet", "Gated DeltaNet"),
                          ("hope_attention", "Hope-Attention")):
        extra = {"cms": {"chunk_sizes": list(budget.chunk_sizes)}} if family == "hope_attention" else {}
        model = {"family": family, "n_layers": budget.n_layers, "max_seq_len": budget.seq_len, **extra}
        models.append((family, label, match_parameters(model, target)[0]))
    models.append(("hope", "Hope", hope))
    rates = sorted(budget.lrs, key=lambda lr: lr != budget.lr)  # the budget's own rate first
    rows = [Row("models", family, label, model, budget.seeds[0], lr=lr) for lr in rates for family, label, model in models]
    rows += [Row("models", family, label, model, seed, lr=best[family])
             for seed in budget.seeds[1:] for family, label, model in models if best and family in best]
    hope_lr = (best or {}).get("hope")
    for key, label, overrides in ABLATIONS:
        for seed in budget.ablation_seeds:
            rows.append(Row("ablations", key, label, hope_model(budget, **overrides), seed, lr=hope_lr))
    for signal in SIGNALS:
        # The default signal's rows are Hope's own model, so run() takes them from the models table.
        cms: dict[str, Any] = {} if signal == _default_signal() else {"signal": signal}
        if signal == "optimizer":
            cms["step_periods"] = list(budget.step_periods)
        for seed in budget.signal_seeds:
            rows.append(Row("signals", signal, f"cms.signal = {signal}", hope_model(budget, cms=cms), seed, lr=hope_lr))
    return rows


def _default_signal() -> str:
    from nestlearn.layers.cms.config import CMSConfig

    return CMSConfig().signal


def _same_run(row: Row | dict[str, Any]) -> tuple[str, int, float | None]:
    """What a row trains: two rows with equal keys are one run."""
    r = asdict(row) if isinstance(row, Row) else row
    return json.dumps(r["model"], sort_keys=True), r["seed"], r["lr"]


def best_rates(results: list[dict[str, Any]]) -> dict[str, float]:
    """family -> the grid rate whose first-seed run scored the lowest validation bpb, among the grid
    runs in ``results`` (a diverged run counts as worst)."""
    runs = [r for r in results if r["table"] == "models" and r["lr"] is not None]
    first = {r["key"]: min(q["seed"] for q in runs if q["key"] == r["key"]) for r in runs}
    grid: dict[str, dict[float, float]] = {}
    for r in runs:
        if r["seed"] == first[r["key"]]:  # the other seeds ran at one rate only, after the choice
            bpb = r["result"]["bpb"]
            grid.setdefault(r["key"], {})[r["lr"]] = math.inf if bpb is None else bpb
    return {family: min(scores, key=scores.get) for family, scores in grid.items()}


def _budget(budget: dict[str, Any]) -> Budget:
    """A :class:`Budget` back from its ``asdict`` form (tuples restored)."""
    tuples = ("seeds", "signal_seeds", "ablation_seeds", "chunk_sizes", "step_periods", "selfmod_chunks", "lrs")
    return Budget(**{k: tuple(v) if k in tuples else v for k, v in budget.items()})


def _run_config(row: dict[str, Any], b: Budget, run_dir: Path) -> Any:
    from nestlearn.train.config import load_run_config

    return load_run_config(None, base={
        "model": row["model"], "data": {"source": "kjv", "tokenizer": "byte"},
        "optim": {"name": "adamw", "lr": row.get("lr") or b.lr, "weight_decay": 0.1, "betas": [0.9, 0.95]},
        "train": {"seed": row["seed"], "steps": b.steps, "batch_size": b.batch_size, "seq_len": b.seq_len,
                  "warmup_steps": b.warmup_steps, "threads": b.threads, "device": "cpu", "out_dir": str(run_dir),
                  "eval_tokens": b.eval_tokens, "sample_tokens": 0}})


def cell_digest(row: dict[str, Any], budget: dict[str, Any], out_dir: str, isolate: bool = True) -> str:
    """The behaviour digest of one row: its resolved model config and the losses of its first two
    training steps, to 4 significant digits (the LM counterpart of
    :func:`~nestlearn.eval.suite.common.behaviour_digest`).

    A code change that alters what a row computes (model, initialisation, data, training loop)
    changes the digest, so :func:`run` trains that row again and reuses the others. The config is
    the resolved one, every default filled in: a changed default whose effect the first two losses
    do not show at 4 digits still reruns the rows it applies to.
    """
    import tempfile

    from nestlearn.train import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        config = _run_config(row, _budget(budget), Path(tmp))
        trainer = Trainer(config, progress=False)
        losses = [trainer.train_step()["loss"] for _ in range(2)]
    text = (json.dumps(model_config_to_dict(config.model), sort_keys=True, default=str) + "|"
            + ",".join(f"{v:.4g}" for v in losses))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_row(row: dict[str, Any], budget: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Train one row and score it; runs in its own process so that its peak memory is its own.

    Returns:
        the row's numbers: ``bpb`` (state reset per window), ``bpb_carried`` (None for bounded
        models), ``tok_s`` (training tokens per second), ``peak_rss_mb``, ``parameters``, ``switches``,
        ``steps`` (completed), ``nonfinite_steps`` (the trainer stops at the first one) and
        ``cpu_min`` (CPU time of training and scoring).
    """
    from nestlearn.eval.lm import evaluate_bpb, evaluate_bpb_carried
    from nestlearn.switches import non_default_switches
    from nestlearn.train import Trainer
    from nestlearn.train.trainer import TrainingDiverged

    b = _budget(budget)
    cpu0 = time.process_time()
    cfg = _run_config(row, b, Path(out_dir) / Row(**row).name.replace("/", "-"))
    trainer = Trainer(cfg, progress=False)
    losses = []
    diverged_at = None
    start = time.perf_counter()
    for _ in range(b.steps):
        try:
            losses.append(trainer.train_step()["loss"])
        except TrainingDiverged:
            diverged_at = trainer.step + 1
            break
    train_s = time.perf_counter() - start
    model, val, token_bytes = trainer.model, trainer.val_ids, trainer.token_bytes
    reset = carried = None
    if diverged_at is None:
        reset = _finite(evaluate_bpb(model, val, token_bytes, b.seq_len, b.batch_size * 4, b.eval_tokens)["bpb"])
        if not model.config.bounded_context:
            carried = _finite(evaluate_bpb_carried(model, val, token_bytes, b.seq_len, streams=b.batch_size * 4,
                                                   max_tokens=b.eval_tokens)["bpb"])
    return {"bpb": reset, "bpb_carried": carried, "diverged_at": diverged_at,
            "tok_s": max(len(losses), 1) * b.batch_size * b.seq_len / train_s,
            "peak_rss_mb": peak_rss_mb(),
            "parameters": model.num_parameters(non_embedding=True), "final_train_loss": (losses or [None])[-1],
            "switches": [[p, v] for p, v, _ in non_default_switches(cfg.to_dict())],
            "d_model": cfg.model.d_model, "recurrent": not model.config.bounded_context,
            "steps": len(losses), "nonfinite_steps": int(diverged_at is not None),
            "cpu_min": (time.process_time() - cpu0) / 60,
            "compiled": chunk_compile_backend() is not None}


def train_cell(row: dict[str, Any], budget: dict[str, Any], out_dir: str, isolate: bool = True) -> dict[str, Any]:
    """:func:`train_row`, in a fresh spawned process when ``isolate`` (so its peak memory is its own),
    with this process's chunk compilation (``run_all.py --compile-chunks``)."""
    if not isolate:
        return train_row(row, budget, out_dir)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=worker_setup,
                                                initargs=worker_settings()) as pool:
        return pool.submit(train_row, row, budget, out_dir).result()


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB.

    On Linux from VmHWM, which belongs to the process's own address space: getrusage's ru_maxrss
    survives exec, so a spawned row would report its parent's peak when that is the larger one.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _finite(x: float) -> float | None:
    """None marks a score that overflowed (the carried state blew up)."""
    return x if math.isfinite(x) else None


def choose_cms_signal(stats: dict[str, dict[str, float]]) -> tuple[str, str]:
    """The D13 decision rule: the lowest mean validation bpb wins; if the best two differ by less than
    the larger of their seed standard deviations, the faster of the two wins.

    Args:
        stats: signal -> ``{"mean": bpb, "std": seed std, "tok_s": tokens per second}``.

    Returns:
        (chosen signal, one-sentence reason).
    """
    ranked = sorted(stats, key=lambda s: stats[s]["mean"])
    best = ranked[0]
    if len(ranked) == 1:
        return best, f"{best} is the only signal measured"
    second = ranked[1]
    gap = stats[second]["mean"] - stats[best]["mean"]
    noise = max(stats[best]["std"], stats[second]["std"])
    if gap < noise:
        faster = max((best, second), key=lambda s: stats[s]["tok_s"])
        return faster, (f"{best} and {second} differ by {gap:.4f} bpb, less than their seed std {noise:.4f}, "
                        f"so the faster one ({faster}) wins")
    return best, f"{best} has the lowest mean bpb, {gap:.4f} below {second} (seed std at most {noise:.4f})"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _score(s: dict[str, Any]) -> str:
    return s["note"] if s["mean"] is None else f"{s['mean']:.3f}"


def _carried(s: dict[str, Any]) -> str:
    if s["carried"] is not None:
        return f"{s['carried']:.3f}"
    return "overflowed" if s["note"] == "carried state overflowed" else "—"


def _mb(s: dict[str, Any]) -> str:
    """Peak memory, or — for rows stored before it was measured per process (their number was the parent's)."""
    return "—" if s["peak_rss_mb"] is None else f"{s['peak_rss_mb']:.0f}"


def _switches(rows: list[dict[str, Any]]) -> str:
    pairs = rows[0]["result"]["switches"]
    return ", ".join(f"`{p.split('model.', 1)[-1]}={v}`" for p, v in pairs) or "defaults"


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Group the rows by (table, key): means and seed stds of every number.

    A models-table family is summarised at its chosen rate (:func:`best_rates`); its ``grid`` holds
    the first seed's bpb at every rate, and its step, non-finite and CPU counts cover every run.
    """
    best = best_rates(results)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["table"], r["key"]), []).append(r)
    out: dict[str, Any] = {}
    for (table, key), every in groups.items():
        rows = [r for r in every if table != "models" or r["lr"] is None or r["lr"] == best[key]]
        first = min(r["seed"] for r in every)
        scores = [r["result"]["bpb"] for r in rows]
        bpb = _mean_std(scores) if None not in scores else (None, None)
        carried = [r["result"]["bpb_carried"] for r in rows]
        diverged = [r["result"]["diverged_at"] for r in rows if r["result"].get("diverged_at")]
        out.setdefault(table, {})[key] = {
            "label": rows[0]["label"], "seeds": [r["seed"] for r in rows], "mean": bpb[0], "std": bpb[1],
            "carried": None if None in carried else statistics.fmean(carried),
            "note": (f"training diverged (step {min(diverged)})" if diverged else
                     "carried state overflowed" if rows[0]["result"].get("recurrent") and None in carried else ""),
            "tok_s": statistics.median(r["result"]["tok_s"] for r in rows),
            "peak_rss_mb": max((r["result"]["peak_rss_mb"] for r in rows if r["result"]["peak_rss_mb"] is not None),
                               default=None),
            "parameters": rows[0]["result"]["parameters"], "d_model": rows[0]["result"]["d_model"],
            "hidden": mlp_hidden(rows[0]["model"]),
            "switches": _switches(rows), "steps": min(r["result"]["steps"] for r in every),
            "nonfinite_steps": sum(r["result"]["nonfinite_steps"] for r in every),
            "cpu_min": sum(r["result"]["cpu_min"] for r in every),
            "lr": best.get(key) if table == "models" else rows[0]["lr"],
            "grid": {r["lr"]: r["result"]["bpb"] for r in every
                     if table == "models" and r["lr"] is not None and r["seed"] == first}}
    return out


def markdown(summary: dict[str, Any], budget: Budget, command: str) -> str:
    """The three tables and the CMS-signal decision as Markdown."""
    b = budget
    tokens = b.steps * b.batch_size * b.seq_len
    lines = [f"- Command: `{command}`",
             f"- Byte-level KJV, {b.n_layers} layers, Hope d_model {b.d_model}; {b.steps} AdamW steps of "
             f"{b.batch_size}×{b.seq_len} tokens ({tokens:,} tokens per row), weight decay 0.1, "
             f"cosine; validation bpb on the first {b.eval_tokens:,} validation targets.",
             "- *reset*: state reset per window of the training length (D18); *carried*: the validation text "
             "read as long streams with the state carried across windows (recurrent models only).",
             f"- tok/s: training tokens per second of the row's own process ({b.threads} torch thread(s)); "
             "peak RSS: that process's peak resident memory (includes the Python and torch runtime). Rows may "
             "run beside other jobs, so compare speed in docs/performance.md, where models are timed in turn.",
             ""]
    models = summary.get("models", {})
    if models:
        lines += ["### Models at equal parameters and tokens", "",
                  f"| model | d_model | MLP hidden | non-emb. params | lr | seeds | val bpb (reset) mean ± std | val bpb (carried) | "
                  f"first seed's bpb at lr {' / '.join(f'{lr:g}' for lr in b.lrs)} | steps | non-finite steps | "
                  "CPU-min (grid and seeds) | tok/s | peak RSS MB | paper Wiki ppl (760M) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for key, s in models.items():
            score = _score(s) if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}"
            grid = " / ".join("—" if s["grid"].get(lr) is None else f"{s['grid'][lr]:.3f}" for lr in b.lrs)
            lines.append(f"| {s['label']} | {s['d_model']} | {s['hidden']} | {s['parameters']:,} | {s['lr']:g} | {len(s['seeds'])} | "
                         f"{score} | {_carried(s)} | {grid} | {s['steps']} | {s['nonfinite_steps']} | "
                         f"{s['cpu_min']:.1f} | {s['tok_s']:.0f} | {_mb(s)} | "
                         f"{PAPER_WIKI_760M.get(key, '—')} |")
        lines.append("")
        later = sorted({f"{s['lr'] or b.lr:g}" for t in ("ablations", "signals") for s in summary.get(t, {}).values()})
        lines.append("The learning rate of each family is the grid rate with the lowest first-seed bpb; its other "
                     "seeds train at that rate. The ablation and CMS-signal rows train at Hope's chosen rate"
                     + (f" (lr {', '.join(later)})." if later else "."))
        edges = [f"{s['label']} ({s['lr']:g})" for s in models.values()
                 if len(b.lrs) > 1 and s["lr"] in (min(b.lrs), max(b.lrs)) and len(s["grid"]) == len(b.lrs)]
        if edges:
            lines.append("Best rate at an end of the grid, which then may not bracket the family's best: "
                         + ", ".join(edges) + ".")
        lines.append("")
    ablations = summary.get("ablations", {})
    hope = models.get("hope")
    if ablations and hope:
        lines += ["### Table-6 ablations of Hope", "",
                  "| variant | switches | val bpb (reset) | Δ vs Hope | val bpb (carried) | paper ppl / acc |",
                  "|---|---|---|---|---|---|",
                  f"| Hope | {hope['switches']} | {_score(hope)} | — | {_carried(hope)} | "
                  f"{'%.2f / %.1f' % PAPER_TABLE6['hope']} |"]
        for key, s in ablations.items():
            paper = PAPER_TABLE6.get(key)
            delta = "—" if s["mean"] is None or hope["mean"] is None else f"{s['mean'] - hope['mean']:+.3f}"
            lines.append(f"| {s['label']} | {s['switches']} | {_score(s)} | {delta} | "
                         f"{_carried(s)} | {'%.2f / %.1f' % paper if paper else '—'} |")
        lines.append("")
    signals = summary.get("signals", {})
    if signals:
        lines += ["### CMS update signal (D13)", "",
                  "| signal | switches | seeds | val bpb (reset) mean ± std | val bpb (carried) | tok/s | peak RSS MB |",
                  "|---|---|---|---|---|---|---|"]
        for key, s in signals.items():
            score = s["note"] if s["mean"] is None else f"{s['mean']:.4f} ± {s['std']:.4f}"
            lines.append(f"| {key} | {s['switches']} | {', '.join(map(str, s['seeds']))} | {score} | "
                         f"{_carried(s)} | {s['tok_s']:.0f} | {_mb(s)} |")
        scored = {k: v for k, v in signals.items() if v["mean"] is not None}
        if scored:
            choice, reason = choose_cms_signal(scored)
            lines += ["", f"**D13 decision rule → `{choice}`**: {reason}."]
    return "\n".join(lines) + "\n"


def run(budget: Budget, out_dir: Path, tables: tuple[str, ...] = TABLES,
        isolate: bool = True, stored_only: bool = False, jobs: int = 1) -> list[dict[str, Any]]:
    """Train and score every planned row of ``tables``; each row in a fresh process if ``isolate``,
    ``jobs`` rows at a time (``stored_only``: train nothing and return the rows already stored).

    Each row is one cell, ``out_dir/cells/<table>_<key>_<seed>.json``, keyed by the budget and the
    row's behaviour digest (:func:`cell_digest`): an interrupted run resumes, and a code change
    retrains only the rows whose first steps it changes.
    """
    # ``parameters`` only sizes the models, whose configs the digest holds: a changed target reruns
    # exactly the rows whose config it changes.
    settings = {k: v for k, v in asdict(budget).items()
                if k not in ("seeds", "signal_seeds", "ablation_seeds", "lrs", "parameters")}

    def train(rows: list[Row], stored: bool = stored_only) -> list[dict[str, Any]]:
        cells = {r.name: (asdict(r), asdict(budget), str(out_dir / "runs"), isolate) for r in rows}
        done = run_cells(train_cell, cells, settings, out_dir / "cells", jobs, "lm", digest=cell_digest,
                         stored_only=stored)
        return [{**asdict(r), "result": done[r.name]} for r in rows if r.name in done]

    # The grid first: the other seeds of each family need its chosen rate, and the ablation and
    # signal rows come last because they are the longest part and rank the least. Without the models
    # table its stored cells still give Hope's rate, at which the ablation and signal rows train.
    grid = train([r for r in plan(budget) if r.table == "models"], stored_only or "models" not in tables)
    known = {Row(**{k: v for k, v in r.items() if k != "result"}).name for r in grid}
    later = [r for r in plan(budget, best_rates(grid)) if r.name not in known]
    # The other seeds of the models table (stored only, without that table: the ablations compare with them).
    grid += train([r for r in later if r.table == "models"], stored_only or "models" not in tables)
    # A row that trains what a models-table row trained (the default CMS signal's rows are Hope's
    # seeds) takes that row's result instead of training it again.
    known_runs = {_same_run(r): r["result"] for r in grid}
    rows = [r for r in later if r.table in tables and r.table != "models"]
    shared = [{**asdict(r), "result": known_runs[_same_run(r)]} for r in rows if _same_run(r) in known_runs]
    return grid + shared + train([r for r in rows if _same_run(r) not in known_runs])


def unstored(budget: Budget, tables: tuple[str, ...], results: list[dict[str, Any]]) -> int:
    """How many planned rows of ``tables`` have no stored result (the rows :func:`run` would train)."""
    names = {Row(**{k: v for k, v in r.items() if k != "result"}).name for r in results}
    grid = [r for r in results if r["table"] == "models"]
    planned = {r.name for r in plan(budget) if r.table == "models" and "models" in tables}
    planned |= {r.name for r in plan(budget, best_rates(grid)) if r.table in tables}
    return len(planned - names)


def section(quick: bool, out_dir: Path, seed: int = 0, tables: tuple[str, ...] | None = None,
            stored_only: bool = False, jobs: int = 1) -> Section:
    """The ``lm`` section of docs/results.md (issue 4's quality benchmark; D13's signal ablation);
    ``tables`` runs and reports a subset of models, ablations, signals (rows already scored are kept);
    ``stored_only`` reports the rows stored so far without training the others; ``jobs`` rows train at
    once."""
    budget = QUICK if quick else FULL
    if seed:
        budget = replace(budget, seeds=tuple(s + seed for s in budget.seeds),
                         signal_seeds=tuple(s + seed for s in budget.signal_seeds),
                         ablation_seeds=tuple(s + seed for s in budget.ablation_seeds))
    torch.set_num_threads(budget.threads)
    results = run(budget, Path(out_dir) / "lm", tuple(tables or TABLES), stored_only=stored_only, jobs=jobs)
    summary = summarise(results)
    command = "python benchmarks/run_all.py --only lm" + (" --quick" if quick else "")
    text = markdown(summary, budget, command)
    if compiled := sum(bool(r["result"].get("compiled")) for r in results):
        text += (f"\n{compiled} of the {len(results)} runs trained with the memories' chunk steps compiled "
                 "(`run_all.py --compile-chunks`): each step agrees with eager training to rounding, and over a "
                 "run those differences grow no more than any other rounding difference (a chaotic row such as "
                 "w/o DGD amplifies them; design.md S11).\n")
    if stored_only and (missing := unstored(budget, tuple(tables or TABLES), results)):
        text = (f"**Partial**: {len(results)} runs stored, {missing} not yet; the same command without "
                "`--stored-only` trains the rest (each family's grid rates on the first seed, then its other "
                "seeds, then the ablation and signal rows).\n\n" + text)
    return Section("lm", "Language modelling: Hope vs baselines, Table-6 ablations, CMS signals",
                   text, {"budget": asdict(budget), "summary": summary, "rows": results})
