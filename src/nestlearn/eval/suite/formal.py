"""The ``formal`` section of docs/results.md: formal-language recognition in the layout of NL-L Table 5.

Protocol (tasks.md §4, CPU tier): next-character-set prediction with |Σ| + 1 sigmoids; every model
trains on a fixed pool of strings with lengths in the training range, until its accuracy on the
first 512 pool strings is 100 % or the step budget is spent; Bin0 holds test strings from the
training range, Bin1 strings up to 50 symbols longer than any training string. A string counts
only when the predicted set is right at every position. Reported: string accuracy in percent,
mean ± std over seeds, beside the paper's Table 5 (spec §9.7).

[Interp] The CPU tier's d = 64 and 5,000 steps would take many hours for Hope on two cores (a Hope
step at d = 32 and batch 32 takes about 0.27 s on one core, ten times a Transformer++ step), so
the full setting uses d = 32 (2 layers) for every model and at most 1,000 steps of batch 32, and
leaves out Gated DeltaNet (DeltaNet is the delta-rule row of Table 5). DeltaNet is also run with
the signed eigenvalue range (design.md S2), which state tracking such as Parity needs.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from nestlearn.data.synthetic import derive_seed, generate, verbatim_overlap
from nestlearn.data.synthetic.base import TaskBatch
from nestlearn.data.synthetic.formal import LANGUAGES
from nestlearn.eval.suite import Section
from nestlearn.eval.suite.common import (
    NAMES,
    behaviour_digest,
    command,
    mean_std,
    nonfinite,
    pct,
    pyplot,
    run_cells,
    suite_model,
    write_json,
)
from nestlearn.eval.tasks import fit_task, task_accuracy

KEY = "formal"
LABELS = {"parity": "Parity", "aa_star": "(aa)*", "abab_star": "(abab)*", "anbn": "aⁿbⁿ", "anbncn": "aⁿbⁿcⁿ",
          "shuffle2": "Shuffle-2"}
# NL-L Table 5 (spec §9.7): (Bin0, Bin1) per language in LANGUAGES order, percent.
PAPER_TABLE5: dict[str, tuple[float, ...]] = {
    "LSTM": (100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100),
    "Transformer": (46.4, 0.0, 0.0, 0.0, 0.0, 0.0, 100, 100, 100, 100, 100, 100),
    "Linear": (78.1, 0.0, 0.0, 0.0, 0.0, 0.0, 100, 100, 100, 100, 100, 100),
    "DeltaNet": (98.2, 10.1, 0.0, 0.0, 0.0, 0.0, 100, 100, 100, 100, 100, 100),
    "SRWM": (100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100),
    "Hope": (100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 100),
}
# Our family -> the paper's row of the same model.
PAPER_ROW = {"lstm": "LSTM", "transformer": "Transformer", "deltanet": "DeltaNet", "hope": "Hope", "hope_formal": "Hope"}


@dataclass(frozen=True)
class FormalSettings:
    """Sizes of one run of the section.

    Attributes:
        languages, models: what is trained (every model on every language).
        train_lengths: inclusive training length range (Bin1 = the next 50 lengths).
        train_count, bin_count: training pool size and test strings per bin.
        steps: step budget per model and language; training stops earlier once the accuracy on the
            first ``check_size`` pool strings, measured every ``check_every`` steps, is 100 %.
        batch_size, lr: AdamW training (gradient clip 1.0).
        by_length: every training batch holds strings of one length (so no padding), the length drawn
            with the pool's frequencies. [Interp, project choice] Padded batches fed the models long
            runs of the pad token after short strings, on which a Titans memory ran away to inf
            outside the loss and, through zero-times-inf gradients, turned every weight into NaN.
        d_model, n_layers: size of every model.
        seeds: how many seeds (seed, seed + 1, …) per cell.
    """

    languages: tuple[str, ...] = LANGUAGES
    models: tuple[str, ...] = ("lstm", "transformer", "titans", "deltanet", "deltanet_signed", "hope", "hope_formal",
                               "hope_attention")
    train_lengths: tuple[int, int] = (1, 50)
    train_count: int = 10_000
    bin_count: int = 500
    steps: int = 1_000
    check_every: int = 50
    check_size: int = 512
    batch_size: int = 32
    by_length: bool = True
    lr: float = 3e-3
    d_model: int = 32
    n_layers: int = 2
    seeds: int = 3


SETTINGS = {
    "full": FormalSettings(),
    "quick": FormalSettings(train_lengths=(1, 12), train_count=2_000, bin_count=100, steps=30, check_every=10,
                            check_size=128, batch_size=16, seeds=1),
    # For tests only: seconds, not evidence.
    "test": FormalSettings(languages=("aa_star", "parity"), models=("lstm", "transformer"), train_lengths=(1, 8),
                           train_count=64, bin_count=16, steps=4, check_every=2, check_size=16, batch_size=8,
                           d_model=16, n_layers=1, seeds=1),
}


def _rows(batch: TaskBatch, index: np.ndarray) -> TaskBatch:
    """The strings ``index`` of ``batch``, trimmed to the longest of them (plus its start token)."""
    lengths = batch.meta["lengths"][index]
    width = int(lengths.max()) + 1
    return replace(batch, inputs=batch.inputs[index, :width], targets=batch.targets[index, :width],
                   target_sets=batch.target_sets[index, :width], meta={**batch.meta, "lengths": lengths})


def batch_order(lengths: np.ndarray, batch_size: int, steps: int, by_length: bool,
                rng: np.random.Generator) -> list[np.ndarray]:
    """Pool rows of each training batch: uniform, or (``by_length``) all of the length of a uniformly drawn row."""
    if not by_length:
        return [rng.integers(0, len(lengths), size=batch_size) for _ in range(steps)]
    rows = {int(n): np.flatnonzero(lengths == n) for n in np.unique(lengths)}
    return [rng.choice(rows[int(lengths[a])], size=batch_size) for a in rng.integers(0, len(lengths), size=steps)]


def _data(language: str, s: FormalSettings, seed: int) -> tuple[TaskBatch, dict[str, TaskBatch]]:
    """The training pool and the Bin0/Bin1 test sets of one language and seed."""
    task = f"formal_{language}"
    kw = {"train_lengths": s.train_lengths}
    pool = generate(task, s.train_count, derive_seed(seed, f"formal/{language}/train"), **kw)
    bins = {b: generate(task, s.bin_count, derive_seed(seed, f"formal/{language}/test"), split=b, **kw)
            for b in ("bin0", "bin1")}
    return pool, bins


def _setup(language: str, s: FormalSettings, seed: int, family: str):
    """The data, the batch order and the freshly initialised model of one cell."""
    pool, bins = _data(language, s, seed)
    rng = np.random.default_rng(derive_seed(seed, f"formal/{language}/batches"))
    order = batch_order(np.asarray(pool.meta["lengths"]), s.batch_size, s.steps, s.by_length, rng)
    longest = max(b.inputs.shape[1] for b in bins.values())
    return pool, bins, order, suite_model(family, s.d_model, s.n_layers, longest, pool, seed)


def cell_digest(language: str, s: FormalSettings, seed: int, family: str) -> str:
    """The behaviour digest of one cell (common.behaviour_digest on its first training batch)."""
    pool, _, order, model = _setup(language, s, seed, family)
    return behaviour_digest(model, _rows(pool, order[0]), s.lr)


def run_cell(language: str, s: FormalSettings, seed: int, family: str) -> dict[str, Any]:
    """Train one model on one language with one seed; its Bin0/Bin1 string accuracy and training record."""
    pool, bins, order, model = _setup(language, s, seed, family)
    check = _rows(pool, np.arange(min(s.check_size, s.train_count)))
    state: dict[str, Any] = {"train_accuracy": float("nan"), "solved_at": None}

    def stop(step: int, loss: float) -> bool:
        if (step + 1) % s.check_every and step + 1 < s.steps:
            return False
        state["train_accuracy"] = task_accuracy(model, check)
        if state["train_accuracy"] == 1.0:
            state["solved_at"] = step + 1
            return True
        return False

    t0 = time.perf_counter()
    losses = fit_task(model, lambda step: _rows(pool, order[step]), s.steps, s.lr, clip=1.0, stop=stop)
    return {"bin0": task_accuracy(model, bins["bin0"]), "bin1": task_accuracy(model, bins["bin1"]),
            "steps": len(losses), "train_accuracy": state["train_accuracy"], "solved_at": state["solved_at"],
            "nonfinite_steps": nonfinite(losses), "seconds": time.perf_counter() - t0, "final_loss": losses[-1]}


def run(s: FormalSettings, out_dir: Path, seed: int = 0, jobs: int = 1) -> dict[str, Any]:
    """Every model × language × seed of ``s`` (``jobs`` processes, resumable); writes ``formal.json``."""
    seeds = [seed + i for i in range(s.seeds)]
    cells = {f"{sd}/{lang}/{fam}": (lang, s, sd, fam) for sd in seeds for lang in s.languages for fam in s.models}
    t0 = time.perf_counter()
    done = run_cells(run_cell, cells, asdict(s), out_dir / "cells", jobs, "formal languages",
                     ignore=("languages", "models", "seeds"), digest=cell_digest)
    runs: dict[str, Any] = {}
    for sd in seeds:
        runs[str(sd)] = {}
        for lang in s.languages:
            pool, bins = _data(lang, s, sd)
            runs[str(sd)][lang] = {"bin0_in_training": verbatim_overlap(pool.inputs, bins["bin0"].inputs,
                                                                         pool.meta["pad_id"]),
                                   **{fam: done[f"{sd}/{lang}/{fam}"] for fam in s.models}}
    result = {"settings": asdict(s), "seeds": seeds, "runs": runs, "seconds": time.perf_counter() - t0,
              "train_seconds": sum(r["seconds"] for r in done.values()), "jobs": jobs}
    write_json(out_dir / "formal.json", result)
    return result


def cell(result: dict[str, Any], family: str, language: str, split: str) -> tuple[float, float]:
    """Mean and std over seeds of one model's accuracy (fraction) on one language and bin."""
    return mean_std([r[language][family][split] for r in result["runs"].values()])


def tables(result: dict[str, Any]) -> str:
    s = result["settings"]
    langs = s["languages"]
    head = "| model | " + " | ".join(f"{LABELS[g]} Bin0 | {LABELS[g]} Bin1" for g in langs) + " |"
    rule = "|---|" + "---|" * (2 * len(langs))
    lines = ["Measured (string accuracy, %, mean ± std over seeds):", "", head, rule]
    for fam in s["models"]:
        cells = [pct(*cell(result, fam, g, b)) for g in langs for b in ("bin0", "bin1")]
        lines.append(f"| {NAMES[fam]} | " + " | ".join(cells) + " |")
    lines += ["", "Paper (NL-L Table 5, spec §9.7; rows of models we do not run kept for reference):", "", head, rule]
    for row, values in PAPER_TABLE5.items():
        by_lang = dict(zip(LANGUAGES, zip(values[::2], values[1::2])))
        lines.append(f"| {row} | " + " | ".join(f"{by_lang[g][0]:g} | {by_lang[g][1]:g}" for g in langs) + " |")
    return "\n".join(lines)


def uninformative(result: dict[str, Any]) -> list[str]:
    """The language × bin cells in which no baseline (a row that is not Hope) reaches 90 %.

    A Hope number in such a cell ranks nothing: the budget, not the architecture, may be what fails.
    """
    s = result["settings"]
    baselines = [f for f in s["models"] if not f.startswith("hope")]
    if not baselines:
        return []
    out = []
    for g in s["languages"]:
        for b in ("bin0", "bin1"):
            best = max(baselines, key=lambda f: cell(result, f, g, b)[0])
            if cell(result, best, g, b)[0] < 0.9:
                out.append(f"{LABELS[g]} {b.title()} (best baseline {NAMES[best]} "
                           f"{pct(cell(result, best, g, b)[0])} %)")
    return out


def claims(result: dict[str, Any]) -> list[str]:
    """Plain statements of how the measurement compares with the paper's claims."""
    s = result["settings"]
    langs, models = s["languages"], s["models"]
    weak = uninformative(result)
    out = [("- Calibration: no baseline reaches 90 % in " + "; ".join(weak) + ". These cells are uninformative "
            "at this budget: a model's number there ranks nothing.") if weak else
           "- Calibration: in every cell some baseline reaches 90 %, so every cell can rank the models."]
    for hope in ("hope", "hope_formal"):
        if hope not in models:
            continue
        short = [f"{LABELS[g]} {b.title()} {pct(cell(result, hope, g, b)[0])} %" for g in langs
                 for b in ("bin0", "bin1") if cell(result, hope, g, b)[0] != 1.0]
        n = 2 * len(langs)
        bin1 = sum(cell(result, hope, g, "bin1")[0] >= 0.9 for g in langs)
        out.append(f"- *Hope reaches 100 % on all six languages at both bins* (paper): {NAMES[hope]} reaches 100 % "
                   f"in {n - len(short)} of {n} cells here, ≥ 90 % at Bin1 on {bin1} of {len(langs)} languages"
                   + (f"; below 100 %: {', '.join(short)}." if short else "."))
    if "transformer" in models:
        hard = [g for g in ("parity", "aa_star", "abab_star") if g in langs]
        cells = ", ".join(f"{LABELS[g]} {pct(cell(result, 'transformer', g, 'bin0')[0])} / "
                          f"{pct(cell(result, 'transformer', g, 'bin1')[0])}" for g in hard)
        fails = [g for g in hard if cell(result, "transformer", g, "bin1")[0] < 0.5]
        out.append(f"- *Transformers fail Parity, (aa)*, (abab)** (paper: 46.4 / 0, 0 / 0, 0 / 0 at Bin0 / Bin1): "
                   f"Transformer++ here {cells} %; below 50 % at Bin1 on {len(fails)} of {len(hard)}.")
    for fam, row in PAPER_ROW.items():
        if fam not in models:
            continue
        paper = dict(zip(LANGUAGES, zip(PAPER_TABLE5[row][::2], PAPER_TABLE5[row][1::2])))
        close = sum(abs(100 * cell(result, fam, g, b)[0] - paper[g][i]) <= 10
                    for g in langs for i, b in enumerate(("bin0", "bin1")))
        out.append(f"- {NAMES[fam]}: {close} of {2 * len(langs)} cells within 10 points of the paper's {row} row.")
    hope_rank = []
    for g in langs:
        for b in ("bin0", "bin1"):
            vals = {f: cell(result, f, g, b)[0] for f in models}
            best = max(v for v in vals.values() if not math.isnan(v))
            if "hope" in vals and vals["hope"] < best:
                hope_rank.append(f"{LABELS[g]} {b.title()} (best: {', '.join(NAMES[f] for f, v in vals.items() if v == best)})")
    if "hope" in models:
        out.append("- Cells where another model beats Hope: " + ("; ".join(hope_rank) if hope_rank else "none") + ".")
    return out


def details(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = ["| model | " + " | ".join(LABELS[g] for g in s["languages"]) + " |",
             "|---|" + "---|" * len(s["languages"])]
    for fam in s["models"]:
        cells = []
        for g in s["languages"]:
            runs = [r[g][fam] for r in result["runs"].values()]
            solved = sum(r["solved_at"] is not None for r in runs)
            steps = round(sum(r["steps"] for r in runs) / len(runs))
            skipped = sum(r["nonfinite_steps"] for r in runs)
            cells.append(f"{solved}/{len(runs)} at {steps}" + (f" ({skipped} NaN)" if skipped else ""))
        lines.append(f"| {NAMES[fam]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    s = result["settings"]
    langs, models = s["languages"], s["models"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4), dpi=110, sharey=True)
    width = 0.8 / len(models)
    for ax, b in zip(axes, ("bin0", "bin1")):
        for j, fam in enumerate(models):
            means = [100 * cell(result, fam, g, b)[0] for g in langs]
            ax.bar(np.arange(len(langs)) + (j - (len(models) - 1) / 2) * width, means, width, label=NAMES[fam])
        ax.set_xticks(range(len(langs)), [LABELS[g] for g in langs])
        ax.set_title(f"{b.title()} ({'training lengths' if b == 'bin0' else 'longer strings'})")
        ax.set_ylim(0, 102)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("string accuracy (%)")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(result: dict[str, Any], quick: bool, seed: int, plot_name: str) -> str:
    s = result["settings"]
    n_lo, n_hi = s["train_lengths"]
    overlap = ", ".join(f"{LABELS[g]} {result['runs'][str(seed)][g]['bin0_in_training']}" for g in s["languages"])
    lines = [
        f"- Command: `{command(KEY, quick, seed)}`",
        (f"- Seeds: {', '.join(map(str, result['seeds']))}; training time {result['train_seconds'] / 60:.1f} "
         "CPU-min over all cells."),
        (f"- Protocol (tasks.md §4): next-character-set prediction, string accuracy. Training lengths "
        f"{n_lo}–{n_hi} (pool of {s['train_count']:,} strings), Bin0 = {s['bin_count']} held-out strings in that range, "
        f"Bin1 = {s['bin_count']} strings of length {n_hi + 1}–{n_hi + 50}. Every model d_model {s['d_model']}, "
        f"{s['n_layers']} layers; AdamW lr {s['lr']}, batch {s['batch_size']}"
        f"{' (strings of one length per batch, no padding)' if s.get('by_length') else ''}, at most {s['steps']} steps, stopped "
        f"once the first {s['check_size']} pool strings are all right (checked every {s['check_every']} steps)."),
        (f"- Bin0 strings that also occur in the training pool (seed {seed}; the degenerate languages have one string "
        f"per length): {overlap}."),
    ]
    if quick:
        lines.append("- **Quick setting**: a smoke run with a few dozen steps on short strings; its numbers say "
                     "nothing about the models. The evidence is the full run (`--quick` left out).")
    lines += ["", tables(result), "", f"![formal languages]({plot_name})", "",
              ("Training: seeds that reached 100 % on the training check, and mean steps run "
              "(NaN: steps skipped for a non-finite loss):"), "", details(result), "",
              "Against the paper's claims:", *claims(result), "",
              ("The paper's models are larger and trained longer on Irie et al.'s setup (not fully specified, "
              "tasks.md §4 [verify]); Titans, Gated DeltaNet and Hope-Attention have no row in Table 5."),
              "",
              ("Hope runs here in its chunk-parallel training form with the suite's memory chunks of 16 tokens "
              "(the paper's Table 5 marks Hope as parallel-trainable but gives no chunk size): inside a chunk "
              "every inner gradient and every generated k, v, η, α reads the chunk's boundary state (D4), so "
              "within a chunk the memory follows a delta-rule recurrence that is linear in its state, and only "
              "the chunk boundaries are non-linear. Token-level updates (chunks of 1) are the fully recurrent "
              "model, at several times the cost per step.")]
    return "\n".join(lines)


def section(quick: bool, out_dir: Path, seed: int = 0, *, settings: FormalSettings | None = None,
            jobs: int = 1, models: tuple[str, ...] | None = None) -> Section:
    """Run the formal-language benchmark and return its section of docs/results.md.

    ``settings`` overrides the quick/full sizes (tests use ``SETTINGS["test"]``); ``jobs`` processes
    train the cells (model × language × seed); finished cells in ``out_dir/cells`` are reused;
    ``models`` runs a subset of the rows.
    """
    s = settings or SETTINGS["quick" if quick else "full"]
    if models:
        s = replace(s, models=tuple(models))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = run(s, out_dir, seed, jobs)
    plot_name = "results_formal.png"
    plot(result, out_dir / plot_name)
    return Section(KEY, "Formal-language recognition (NL-L Table 5)", markdown(result, quick, seed, plot_name), result)
