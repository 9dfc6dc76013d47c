"""The ``mqar`` section of docs/results.md: multi-query associative recall, accuracy against the number of pairs.

Protocol (tasks.md §1, CPU tier): vocabulary 256, (sequence length, key–value pairs) ∈ {(64, 4),
(96, 8), (128, 16)}, a fixed training set of 20k sequences per setting and 1k test sequences;
d = 64, 2 layers; the output head only at the labelled positions. Every model trains on the three
settings in turn (one batch of one setting per step) at each rate of one grid and is scored on each
setting; its row is its best rate. The NL paper reports no MQAR (spec §9.6), so there is no paper
number to set beside it.

[Interp] The sizes are calibrated on two shared cores (tasks.md §1): at Zoology's vocabulary 8192
and 600 steps no model passed 6 %; at vocabulary 256 Transformer++ leaves its plateau after about
1,100–2,000 steps depending on the rate, so the section trains 2,000 steps, the most the ~3 CPU-hour
budget of seven rows × three rates allows (Hope's step costs about 15 Transformer++ steps).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from nestlearn.data.synthetic import derive_seed, generate
from nestlearn.data.synthetic.base import TaskBatch
from nestlearn.eval.suite import Section
from nestlearn.eval.suite.common import (
    HOPE_ROWS,
    NAMES,
    behaviour_digest,
    calibration,
    command,
    mean_std,
    nonfinite,
    pct,
    pyplot,
    run_cells,
    settings_line,
    suite_model,
    write_json,
)
from nestlearn.eval.tasks import fit_task, task_accuracy
from nestlearn.models.lm import CausalLM

KEY = "mqar"


@dataclass(frozen=True)
class MQARSettings:
    """Attributes:
        models: rows of the tables (families or :data:`~nestlearn.eval.suite.common.VARIANTS`), in
            the order they train.
        settings: (seq_len, num_pairs) pairs, easiest first, trained in turn and scored one by one.
        vocab_size, train_count, test_count: data (per setting).
        steps, batch_size: AdamW training (gradient clip 1.0, constant rate).
        lrs: the learning-rate grid every model trains at; a model's row reports its best rate.
        d_model, n_layers: size of every model.
        seeds: how many seeds (seed, seed + 1, …).
    """

    models: tuple[str, ...] = ("transformer", "deltanet", "deltanet_signed", "gated_deltanet", "titans",
                               "hope_attention", "hope")
    settings: tuple[tuple[int, int], ...] = ((64, 4), (96, 8), (128, 16))
    vocab_size: int = 256
    train_count: int = 20_000
    test_count: int = 1_000
    steps: int = 2_000
    batch_size: int = 32
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    d_model: int = 64
    n_layers: int = 2
    seeds: int = 1


SETTINGS = {
    "full": MQARSettings(),
    "quick": MQARSettings(settings=((32, 2), (64, 4), (96, 8)), vocab_size=128, train_count=2_000,
                          test_count=128, steps=24, d_model=32, lrs=(3e-3, 1e-2)),
    "test": MQARSettings(models=("transformer", "gated_deltanet"), settings=((16, 2), (32, 4)), vocab_size=64,
                         train_count=64, test_count=16, steps=4, batch_size=8, lrs=(1e-3, 1e-2), d_model=16,
                         n_layers=1),
}

def _rows(batch: TaskBatch, index: np.ndarray) -> TaskBatch:
    return replace(batch, inputs=batch.inputs[index], targets=batch.targets[index])


def _data(s: MQARSettings, seed: int) -> list[tuple[TaskBatch, TaskBatch]]:
    """(training, test) sets of every (L, D) setting for one seed."""
    data = []
    for L, D in s.settings:
        kw = {"seq_len": L, "num_pairs": D, "vocab_size": s.vocab_size}
        data.append((generate("mqar", s.train_count, derive_seed(seed, f"mqar/{L}/{D}/train"), **kw),
                     generate("mqar", s.test_count, derive_seed(seed, f"mqar/{L}/{D}/test"), **kw)))
    return data


def _setup(s: MQARSettings, seed: int, family: str) -> tuple[list[tuple[TaskBatch, TaskBatch]], list[np.ndarray], CausalLM]:
    """The data, the batch order and the fresh model of one cell."""
    data = _data(s, seed)
    rng = np.random.default_rng(derive_seed(seed, "mqar/batches"))
    order = [rng.integers(0, s.train_count, size=s.batch_size) for _ in range(s.steps)]
    longest = max(L for L, _ in s.settings)
    return data, order, suite_model(family, s.d_model, s.n_layers, longest, data[0][0], seed)


def cell_digest(s: MQARSettings, seed: int, family: str, lr: float) -> str:
    """The behaviour digest of one cell (common.behaviour_digest on its first training batch)."""
    data, order, model = _setup(s, seed, family)
    return behaviour_digest(model, _rows(data[0][0], order[0]), lr)


def run_cell(s: MQARSettings, seed: int, family: str, lr: float) -> dict[str, Any]:
    """Train one model at one rate on the settings in turn (one batch of one setting per step); accuracy per setting."""
    data, order, model = _setup(s, seed, family)
    # Process CPU time, not wall time: the cost of the cell alone on a shared or paused machine.
    t0 = time.process_time()
    losses = fit_task(model, lambda step: _rows(data[step % len(data)][0], order[step]), s.steps, lr, clip=1.0)
    acc = {f"{L}/{D}": task_accuracy(model, test) for (L, D), (_, test) in zip(s.settings, data)}
    return {"accuracy": acc, "lr": lr, "steps": len(losses), "cpu_seconds": time.process_time() - t0,
            "nonfinite_steps": nonfinite(losses), "final_loss": losses[-1],
            "parameters": model.num_parameters(non_embedding=False)}


def run(s: MQARSettings, out_dir: Path, seed: int = 0, jobs: int = 1) -> dict[str, Any]:
    """Every model × rate × seed of ``s`` (``jobs`` processes, resumable); writes ``mqar.json``.

    Cells are named ``seed/model/lr`` and stored without the model list, the grid and the seed
    count, so adding a model or a rate reuses the cells already trained; their behaviour digest
    reruns the cells a code change alters."""
    seeds = [seed + i for i in range(s.seeds)]
    cells = {f"{sd}/{fam}/{lr:g}": (s, sd, fam, lr) for fam in s.models for lr in s.lrs for sd in seeds}
    t0 = time.perf_counter()
    done = run_cells(run_cell, cells, asdict(s), out_dir / "cells", jobs, "mqar", ignore=("models", "seeds", "lrs"),
                     digest=cell_digest)
    runs = {str(sd): {fam: {f"{lr:g}": done[f"{sd}/{fam}/{lr:g}"] for lr in s.lrs} for fam in s.models}
            for sd in seeds}
    result = {"settings": asdict(s), "seeds": seeds, "runs": runs, "seconds": time.perf_counter() - t0,
              "train_seconds": sum(r["cpu_seconds"] for r in done.values()), "jobs": jobs}
    write_json(out_dir / "mqar.json", result)
    return result


def grid_score(result: dict[str, Any], family: str, lr: str) -> float:
    """Seed-mean accuracy of one (model, rate), averaged over the settings: what picks a row's rate."""
    keys = [f"{L}/{D}" for L, D in result["settings"]["settings"]]
    return float(np.mean([cell(result, family, k, lr)[0] for k in keys]))


def best_lr(result: dict[str, Any], family: str) -> str:
    """The rate of ``family``'s best run (a NaN score never wins)."""
    lrs = next(iter(result["runs"].values()))[family]
    return max(lrs, key=lambda lr: np.nan_to_num(grid_score(result, family, lr), nan=-1.0))


def cell(result: dict[str, Any], family: str, setting: str, lr: str | None = None) -> tuple[float, float]:
    """Mean and std over seeds of one setting's accuracy at rate ``lr`` (default: the family's best)."""
    lr = best_lr(result, family) if lr is None else lr
    return mean_std([r[family][lr]["accuracy"][setting] for r in result["runs"].values()])


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    s = result["settings"]
    pairs = [D for _, D in s["settings"]]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for fam in s["models"]:
        label = f"{NAMES[fam]} (lr {best_lr(result, fam)})"
        ax.plot(pairs, [100 * cell(result, fam, f"{L}/{D}")[0] for L, D in s["settings"]], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(pairs, [f"{D} pairs\nL={L}" for L, D in s["settings"]])
    ax.set_ylim(0, 102)
    ax.set_ylabel("recall accuracy (%)")
    ax.set_title(f"MQAR, V={s['vocab_size']}, d={s['d_model']}, best rate per model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def verdict(result: dict[str, Any]) -> tuple[str, bool]:
    """The sentence on whether the section can rank models, and whether it may (tasks.md §1).

    The bar is the strongest baseline's accuracy at the easiest setting: a comparison in which no
    baseline learns the task says nothing about Hope."""
    s = result["settings"]
    easiest = "{}/{}".format(*s["settings"][0])
    pool = [f for f in s["models"] if f not in HOPE_ROWS] or list(s["models"])
    best = max(pool, key=lambda f: np.nan_to_num(cell(result, f, easiest)[0], nan=-1.0))
    score = cell(result, best, easiest)[0]
    text, may_rank = calibration(score, f"the strongest baseline, {NAMES[best]}, reaches {pct(score)} % at "
                                        f"D={s['settings'][0][1]}")
    return f"The task is {text}.", may_rank


def _best_table(result: dict[str, Any], keys: list[str]) -> list[str]:
    s = result["settings"]
    lines = ["| model | parameters | best lr | " + " | ".join(f"D={k.split('/')[1]} (L={k.split('/')[0]})" for k in keys)
             + " | steps | non-finite steps | CPU-min (best run) | CPU-min (grid) |",
             "|---|---|---|" + "---|" * (len(keys) + 4)]
    for fam in s["models"]:
        lr = best_lr(result, fam)
        runs = [r[fam] for r in result["runs"].values()]
        best = [r[lr] for r in runs]
        cells = " | ".join(pct(*cell(result, fam, k, lr)) for k in keys)
        lines.append(f"| {NAMES[fam]} | {best[0]['parameters']:,} | {lr} | {cells} | "
                     f"{round(np.mean([b['steps'] for b in best]))} | {sum(b['nonfinite_steps'] for b in best)} | "
                     f"{sum(b['cpu_seconds'] for b in best) / 60:.1f} | "
                     f"{sum(c['cpu_seconds'] for r in runs for c in r.values()) / 60:.1f} |")
    return lines


def _grid_table(result: dict[str, Any]) -> list[str]:
    s = result["settings"]
    lrs = [f"{lr:g}" for lr in s["lrs"]]
    lines = ["| model | " + " | ".join(f"lr {lr}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
    for fam in s["models"]:
        skipped = {lr: sum(r[fam][lr]["nonfinite_steps"] for r in result["runs"].values()) for lr in lrs}
        lines.append(f"| {NAMES[fam]} | " + " | ".join(
            pct(grid_score(result, fam, lr)) + (f" ({skipped[lr]} non-finite)" if skipped[lr] else "")
            for lr in lrs) + " |")
    return lines


def markdown(result: dict[str, Any], quick: bool, seed: int, plot_name: str) -> str:
    s = result["settings"]
    keys = [f"{L}/{D}" for L, D in s["settings"]]
    lrs = ", ".join(f"{lr:g}" for lr in s["lrs"])
    lines = [f"- Command: `{command(KEY, quick, seed)}`",
             (f"- Seeds: {', '.join(map(str, result['seeds']))}; {result['train_seconds'] / 60:.1f} CPU-min "
              "of training and scoring over all cells."),
             (f"- Protocol (tasks.md §1): vocabulary {s['vocab_size']}, settings (L, D) = "
              f"{', '.join(f'({L}, {D})' for L, D in s['settings'])}, {s['train_count']:,} training and "
              f"{s['test_count']:,} test sequences per setting; the settings take turns, one batch of "
              f"{s['batch_size']} per step, {s['steps']:,} steps, AdamW at a constant rate, gradient clip 1.0; "
              f"d_model {s['d_model']}, {s['n_layers']} layers. Accuracy over the queried keys (argmax = value)."),
             (f"- Learning rates: every model trains at each of {lrs}; a row shows its best run (highest accuracy "
              "averaged over the settings) and the rate that gave it."),
             settings_line(s["models"])]
    if quick:
        lines.append("- **Quick setting**: tiny sizes and a few dozen steps; a smoke run, not evidence.")
    missing = [NAMES[m] for m in MQARSettings().models if m not in s["models"]]
    if missing and not quick:
        lines.append(f"- **Partial**: the rows {', '.join(missing)} of the full section are not trained yet "
                     "(the run resumes from the stored cells).")
    text, ranks = verdict(result)
    lines += ["", text, "", *_best_table(result, keys), "",
              "Every rate of the grid (accuracy averaged over the settings; non-finite steps skipped, if any):", "",
              *_grid_table(result), "", f"![MQAR accuracy]({plot_name})", "",
              "The NL paper reports no MQAR (spec §9.6); these numbers have no published counterpart."]
    if ranks:
        best = {k: max(s["models"], key=lambda f: np.nan_to_num(cell(result, f, k)[0], nan=-1.0)) for k in keys}
        lines.append("Best model per setting: " + ", ".join(
            f"D={k.split('/')[1]}: {NAMES[f]}" for k, f in best.items()) + ".")
        baselines = [f for f in s["models"] if f not in HOPE_ROWS]
        if "hope" in s["models"] and baselines:
            top = {k: max(baselines, key=lambda f: np.nan_to_num(cell(result, f, k)[0], nan=-1.0)) for k in keys}
            lines.append("Hope against the best baseline: " + ", ".join(
                f"D={k.split('/')[1]}: {pct(cell(result, 'hope', k)[0])} vs {pct(cell(result, top[k], k)[0])} % "
                f"({NAMES[top[k]]})" for k in keys) + ".")
            setting = next(iter(result["runs"].values()))  # parameter counts do not depend on the setting or rate
            size = {f: next(iter(setting[f].values()))["parameters"] for f in s["models"]}
            largest = max(baselines, key=size.get)
            lines.append(f"Every row has the same width, not the same parameter count: Hope has {size['hope']:,} "
                         f"parameters, {size['hope'] / size[largest]:.1f}× the largest baseline ({NAMES[largest]}, "
                         f"{size[largest]:,}).")
    return "\n".join(lines)


def section(quick: bool, out_dir: Path, seed: int = 0, *, settings: MQARSettings | None = None,
            jobs: int = 1, models: tuple[str, ...] | None = None) -> Section:
    """Run the MQAR benchmark and return its section of docs/results.md (``settings``: tests; ``jobs``
    processes train the model × rate × seed cells; finished cells in ``out_dir/cells`` are reused;
    ``models``: only these rows, e.g. to report the cells finished so far)."""
    s = settings or SETTINGS["quick" if quick else "full"]
    if models:
        s = replace(s, models=tuple(models))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = run(s, out_dir, seed, jobs)
    plot_name = "results_mqar.png"
    plot(result, out_dir / plot_name)
    return Section(KEY, "MQAR: multi-query associative recall", markdown(result, quick, seed, plot_name), result)
