"""The ``mqar`` section of docs/results.md: multi-query associative recall, accuracy against the number of pairs.

Protocol (tasks.md §1, CPU tier): vocabulary 8192, (sequence length, key–value pairs) ∈ {(64, 4),
(128, 8), (256, 16)}, a fixed training set of 20k sequences per setting and 1k test sequences;
d = 64, 2 layers; the output head only at the labelled positions. Every model trains on the three
settings in turn (one batch of one setting per step) and is scored on each. The NL paper reports
no MQAR (spec §9.6), so there is no paper number to set beside it.

[Interp] The full setting trains 600 steps of batch 32 (tasks.md sizes the data, not the budget):
a Hope step at batch 64 takes about 4 s on one core, ten times a Transformer++ step, and the
whole suite has to fit in a few hours on two cores.
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
    NAMES,
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

KEY = "mqar"


@dataclass(frozen=True)
class MQARSettings:
    """Attributes:
        settings: (seq_len, num_pairs) pairs, trained in turn and scored one by one.
        vocab_size, train_count, test_count: data (per setting).
        steps, batch_size, lr: AdamW training (gradient clip 1.0).
        d_model, n_layers: size of every model.
        seeds: how many seeds (seed, seed + 1, …).
    """

    models: tuple[str, ...] = ("transformer", "titans", "deltanet", "gated_deltanet", "hope", "hope_attention")
    settings: tuple[tuple[int, int], ...] = ((64, 4), (128, 8), (256, 16))
    vocab_size: int = 8192
    train_count: int = 20_000
    test_count: int = 1_000
    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-3
    d_model: int = 64
    n_layers: int = 2
    seeds: int = 1


SETTINGS = {
    "full": MQARSettings(),
    "quick": MQARSettings(settings=((32, 2), (64, 4), (96, 8)), vocab_size=1024, train_count=2_000,
                          test_count=128, steps=24, batch_size=32, d_model=32),
    "test": MQARSettings(models=("transformer", "gated_deltanet"), settings=((16, 2), (32, 4)), vocab_size=64,
                         train_count=64, test_count=16, steps=4, batch_size=8, d_model=16, n_layers=1),
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


def run_cell(s: MQARSettings, seed: int, family: str) -> dict[str, Any]:
    """Train one model on the settings in turn (one batch of one setting per step); accuracy per setting."""
    data = _data(s, seed)
    rng = np.random.default_rng(derive_seed(seed, "mqar/batches"))
    order = [rng.integers(0, s.train_count, size=s.batch_size) for _ in range(s.steps)]
    longest = max(L for L, _ in s.settings)
    model = suite_model(family, s.d_model, s.n_layers, longest, data[0][0], seed)
    t0 = time.perf_counter()
    losses = fit_task(model, lambda step: _rows(data[step % len(data)][0], order[step]), s.steps, s.lr, clip=1.0)
    acc = {f"{L}/{D}": task_accuracy(model, test) for (L, D), (_, test) in zip(s.settings, data)}
    return {"accuracy": acc, "seconds": time.perf_counter() - t0, "nonfinite_steps": nonfinite(losses),
            "final_loss": losses[-1], "parameters": model.num_parameters(non_embedding=False)}


def run(s: MQARSettings, out_dir: Path, seed: int = 0, jobs: int = 1) -> dict[str, Any]:
    """Every model × seed of ``s`` (``jobs`` processes, resumable); writes ``mqar.json``."""
    seeds = [seed + i for i in range(s.seeds)]
    cells = {f"{sd}/{fam}": (s, sd, fam) for sd in seeds for fam in s.models}
    t0 = time.perf_counter()
    done = run_cells(run_cell, cells, asdict(s), out_dir / "cells", jobs, "mqar", ignore=("models", "seeds"))
    runs = {str(sd): {fam: done[f"{sd}/{fam}"] for fam in s.models} for sd in seeds}
    result = {"settings": asdict(s), "seeds": seeds, "runs": runs, "seconds": time.perf_counter() - t0,
              "train_seconds": sum(r["seconds"] for r in done.values()), "jobs": jobs}
    write_json(out_dir / "mqar.json", result)
    return result


def cell(result: dict[str, Any], family: str, setting: str) -> tuple[float, float]:
    return mean_std([r[family]["accuracy"][setting] for r in result["runs"].values()])


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    s = result["settings"]
    pairs = [D for _, D in s["settings"]]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for fam in s["models"]:
        ax.plot(pairs, [100 * cell(result, fam, f"{L}/{D}")[0] for L, D in s["settings"]], marker="o", label=NAMES[fam])
    ax.set_xscale("log", base=2)
    ax.set_xticks(pairs, [f"{D} pairs\nL={L}" for L, D in s["settings"]])
    ax.set_ylim(0, 102)
    ax.set_ylabel("recall accuracy (%)")
    ax.set_title(f"MQAR, V={s['vocab_size']}, d={s['d_model']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(result: dict[str, Any], quick: bool, seed: int, plot_name: str) -> str:
    s = result["settings"]
    keys = [f"{L}/{D}" for L, D in s["settings"]]
    lines = [f"- Command: `{command(KEY, quick, seed)}`",
             (f"- Seeds: {', '.join(map(str, result['seeds']))}; training time {result['train_seconds'] / 60:.1f} "
              "CPU-min over all cells."),
             (f"- Protocol (tasks.md §1): vocabulary {s['vocab_size']}, settings (L, D) = "
             f"{', '.join(f'({L}, {D})' for L, D in s['settings'])}, {s['train_count']:,} training and "
             f"{s['test_count']:,} test sequences per setting; the settings take turns, one batch of "
             f"{s['batch_size']} per step, {s['steps']} steps, AdamW lr {s['lr']}; d_model {s['d_model']}, "
             f"{s['n_layers']} layers. Accuracy over the queried keys (argmax = value).")]
    if quick:
        lines.append("- **Quick setting**: smaller vocabulary and a few dozen steps; a smoke run, not evidence.")
    lines += ["", "| model | parameters | " + " | ".join(f"D={k.split('/')[1]} (L={k.split('/')[0]})" for k in keys)
              + " | train s |", "|---|---|" + "---|" * (len(keys) + 1)]
    first = next(iter(result["runs"].values()))
    for fam in s["models"]:
        cells = " | ".join(pct(*cell(result, fam, k)) for k in keys)
        lines.append(f"| {NAMES[fam]} | {first[fam]['parameters']:,} | {cells} | {first[fam]['seconds']:.0f} |")
    best = {k: max(s["models"], key=lambda f: cell(result, f, k)[0]) for k in keys}
    lines += ["", f"![MQAR accuracy]({plot_name})", "",
              "The NL paper reports no MQAR (spec §9.6); these numbers have no published counterpart. "
              "Best model per setting: " + ", ".join(f"D={k.split('/')[1]}: {NAMES[f]}" for k, f in best.items()) + "."]
    if "hope" in s["models"]:
        lines.append("Hope against the best: " + ", ".join(
            f"D={k.split('/')[1]}: {pct(cell(result, 'hope', k)[0])} vs {pct(cell(result, best[k], k)[0])} %"
            for k in keys) + ".")
    return "\n".join(lines)


def section(quick: bool, out_dir: Path, seed: int = 0, *, settings: MQARSettings | None = None,
            jobs: int = 1) -> Section:
    """Run the MQAR benchmark and return its section of docs/results.md (``settings``: tests; ``jobs``
    processes train the model × seed cells; finished cells in ``out_dir/cells`` are reused)."""
    s = settings or SETTINGS["quick" if quick else "full"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = run(s, out_dir, seed, jobs)
    plot_name = "results_mqar.png"
    plot(result, out_dir / plot_name)
    return Section(KEY, "MQAR: multi-query associative recall", markdown(result, quick, seed, plot_name), result)
