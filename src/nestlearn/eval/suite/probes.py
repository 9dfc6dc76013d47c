"""The loop shared by the text-probe sections (niah, babi): train on a task mixture, score a task × length grid.

Each model is trained from scratch on the probe's own distribution (tasks.md §2.2: small models do
not follow instructions): one batch of one task per step, the tasks taking turns, at the training
length and from the KJV *train* split. It is then scored at every evaluation length on the *test*
split with both metrics of :mod:`nestlearn.eval.text` (greedy decoding and ranking).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nestlearn.data.synthetic import derive_seed, generate
from nestlearn.data.synthetic.base import TaskBatch
from nestlearn.eval.suite.common import (
    HOPE_ROWS,
    NAMES,
    behaviour_digest,
    calibration,
    mean_std,
    nonfinite,
    pct,
    pyplot,
    run_cells,
    suite_model,
    write_json,
)
from nestlearn.eval.tasks import fit_task

METRICS = ("decoding", "ranking")


@dataclass(frozen=True)
class ProbeSettings:
    """Attributes:
        tasks: generator names, e.g. ``s_niah_1`` or ``babi_qa1``.
        models: model families.
        train_len: training length in bytes (the generator's ``seq_len``).
        eval_lens: evaluation lengths in bytes.
        samples: test samples per task and length.
        steps, batch_size, lr: AdamW training (gradient clip 1.0).
        d_model, n_layers: size of every model.
        seeds: how many seeds (seed, seed + 1, …).
        samples_per_pass: prompts read per forward at evaluation.
    """

    tasks: tuple[str, ...]
    models: tuple[str, ...]
    train_len: int
    eval_lens: tuple[int, ...]
    samples: int
    steps: int
    batch_size: int
    lr: float
    d_model: int
    n_layers: int
    seeds: int = 1
    samples_per_pass: int = 8


def _tests(name: str, s: ProbeSettings, seed: int) -> dict[tuple[str, int], TaskBatch]:
    """The test batch of every (task, evaluation length)."""
    return {(t, n): generate(t, s.samples, derive_seed(seed, f"{name}/{t}/{n}/test"), seq_len=n, split="test")
            for t in s.tasks for n in s.eval_lens}


def _setup(name: str, s: ProbeSettings, seed: int, family: str, base_seed: int):
    """The test batches, the training sampler and the freshly initialised model of one cell."""
    tests = _tests(name, s, base_seed)
    # Attention models need max_seq_len past the longest prompt plus the decoded tokens, and past
    # training rows whose story alone outgrows the training length (bAbI-style qa3).
    longest = max([b.inputs.shape[1] for b in tests.values()] + [2048]) + 64
    train_seed = derive_seed(seed, f"{name}/train")

    def sample(step: int) -> TaskBatch:
        task = s.tasks[step % len(s.tasks)]
        return generate(task, s.batch_size, train_seed + step, seq_len=s.train_len, split="train")

    return tests, sample, suite_model(family, s.d_model, s.n_layers, longest, sample(0), seed)


def cell_digest(name: str, s: ProbeSettings, score: Callable[..., dict[str, Any]], seed: int, family: str,
                base_seed: int) -> str:
    """The behaviour digest of one cell (common.behaviour_digest on its first training batch)."""
    _, sample, model = _setup(name, s, seed, family, base_seed)
    return behaviour_digest(model, sample(0), s.lr)


def run_cell(name: str, s: ProbeSettings, score: Callable[..., dict[str, Any]], seed: int, family: str,
             base_seed: int) -> dict[str, Any]:
    """Train one model (seed ``seed``) on the task mixture, then score it on every (task, length)."""
    tests, sample, model = _setup(name, s, seed, family, base_seed)
    t0 = time.perf_counter()
    losses = fit_task(model, sample, s.steps, s.lr, clip=1.0)
    train_s = time.perf_counter() - t0
    grid: dict[str, dict[str, Any]] = {}
    for (task, n), batch in tests.items():
        r = score(model, batch, s.samples_per_pass)
        grid.setdefault(task, {})[str(n)] = {m: r[m] for m in METRICS} | {"examples": r["generated"][:3]}
    return {"grid": grid, "train_seconds": train_s, "eval_seconds": time.perf_counter() - t0 - train_s,
            "nonfinite_steps": nonfinite(losses), "final_loss": losses[-1],
            "losses": losses[:: max(1, len(losses) // 200)]}


def run_probe(name: str, s: ProbeSettings, score: Callable[..., dict[str, Any]], out_dir: Path,
              seed: int = 0, jobs: int = 1) -> dict[str, Any]:
    """Train every model × seed of ``s`` and score it on every (task, length), in ``jobs`` processes
    (``score`` must be a module-level function), reusing finished cells; writes ``{name}.json``."""
    seeds = [seed + i for i in range(s.seeds)]
    cells = {f"{sd}/{fam}": (name, s, score, sd, fam, seed) for sd in seeds for fam in s.models}
    t0 = time.perf_counter()
    done = run_cells(run_cell, cells, {"settings": asdict(s), "score": score.__qualname__},
                     out_dir / "cells", jobs, name, digest=cell_digest)
    runs = {str(sd): {fam: done[f"{sd}/{fam}"] for fam in s.models} for sd in seeds}
    result = {"settings": asdict(s), "seeds": seeds, "runs": runs, "seconds": time.perf_counter() - t0,
              "jobs": jobs, "test_widths": {f"{t}/{n}": b.inputs.shape[1] for (t, n), b in _tests(name, s, seed).items()}}
    write_json(out_dir / f"{name}.json", result)
    return result


def cell(result: dict[str, Any], family: str, task: str, length: int, metric: str) -> tuple[float, float]:
    """Mean and std over seeds of one score (a fraction)."""
    return mean_std([r[family]["grid"][task][str(length)][metric] for r in result["runs"].values()])


def task_mean(result: dict[str, Any], family: str, length: int, metric: str) -> float:
    """Mean over the tasks of one model's score at one length."""
    tasks = result["settings"]["tasks"]
    return sum(cell(result, family, t, length, metric)[0] for t in tasks) / len(tasks)


def grid_table(result: dict[str, Any], metric: str, label: Callable[[str], str]) -> str:
    """Rows model × task, columns the evaluation lengths; percent."""
    s = result["settings"]
    lines = ["| model | task | " + " | ".join(str(n) for n in s["eval_lens"]) + " |",
             "|---|---|" + "---|" * len(s["eval_lens"])]
    for fam in s["models"]:
        for t in s["tasks"]:
            lines.append(f"| {NAMES[fam]} | {label(t)} | "
                         + " | ".join(pct(*cell(result, fam, t, n, metric)) for n in s["eval_lens"]) + " |")
    return "\n".join(lines)


def training_line(result: dict[str, Any]) -> str:
    first = next(iter(result["runs"].values()))
    parts = []
    for fam in result["settings"]["models"]:
        r = first[fam]
        nan = f", {r['nonfinite_steps']} NaN steps skipped" if r["nonfinite_steps"] else ""
        parts.append(f"{NAMES[fam]} {r['train_seconds']:.0f} s train / {r['eval_seconds']:.0f} s eval, "
                     f"final loss {r['final_loss']:.3f}{nan}")
    return "- Per model (first seed): " + "; ".join(parts) + "."


def compute_minutes(result: dict[str, Any]) -> float:
    """Training plus scoring time of every cell, in CPU-minutes (cells may come from earlier runs)."""
    return sum(r["train_seconds"] + r["eval_seconds"] for run in result["runs"].values() for r in run.values()) / 60


def status_lines(result: dict[str, Any], chance: float | dict[str, float] | None = None) -> list[str]:
    """Which models diverged (non-finite final loss) and, given the ``chance`` level (one for every
    task, or task -> level), which score at chance: ranking accuracy within two binomial standard
    errors above it in every cell."""
    s = result["settings"]
    first = next(iter(result["runs"].values()))
    out = []
    diverged = [f for f in s["models"] if not math.isfinite(first[f]["final_loss"])]
    if diverged:
        out.append("- Diverged in training (non-finite final loss, so non-finite scores, counted as wrong): "
                   + ", ".join(f"{NAMES[f]} ({first[f]['nonfinite_steps']} of {s['steps']} steps skipped)"
                               for f in diverged) + ".")
    if chance is not None:
        levels = chance if isinstance(chance, dict) else dict.fromkeys(s["tasks"], chance)
        bounds = {t: p + 2 * math.sqrt(p * (1 - p) / s["samples"]) for t, p in levels.items()}
        flat = [f for f in s["models"] if f not in diverged and all(
            cell(result, f, t, n, "ranking")[0] <= bounds[t] for t in s["tasks"] for n in s["eval_lens"])]
        if flat:
            if isinstance(chance, dict):
                rule = "within two standard errors above each task's chance: " + ", ".join(
                    f"≤ {pct(bounds[t])} % for {t.split('_')[-1]}" for t in s["tasks"])
            else:
                rule = f"ranking ≤ {pct(bounds[s['tasks'][0]])} %, two standard errors above {pct(chance)} %"
            out.append(f"- At chance in every cell ({rule}): " + ", ".join(NAMES[f] for f in flat) + ".")
    return out


def verdicts(result: dict[str, Any], label: Callable[[str], str]) -> list[str]:
    """Per task, whether it can rank models (tasks.md §1): the strongest baseline's ranking accuracy
    at the shortest length, the easiest setting. Below 50 % the task is uninformative at this budget."""
    s = result["settings"]
    shortest = min(s["eval_lens"])
    pool = [f for f in s["models"] if f not in HOPE_ROWS] or list(s["models"])
    lines = []
    for t in s["tasks"]:
        score, best = max((cell(result, f, t, shortest, "ranking")[0], f) for f in pool)
        text, _ = calibration(score, f"the strongest baseline, {NAMES[best]}, ranks {pct(score)} % at {shortest} bytes")
        lines.append(f"- {label(t)}: {text}.")
    return lines


def plot_grid(result: dict[str, Any], path: Path, label: Callable[[str], str], xlabel: str) -> None:
    """One panel per task: accuracy against length, ranking solid and decoding dashed, one colour per model."""
    plt = pyplot()
    s = result["settings"]
    fig, axes = plt.subplots(1, len(s["tasks"]), figsize=(3.6 * len(s["tasks"]), 3.6), dpi=110, sharey=True,
                             squeeze=False)
    xs = list(range(len(s["eval_lens"])))
    for ax, t in zip(axes[0], s["tasks"]):
        for j, fam in enumerate(s["models"]):
            color = f"C{j}"
            for metric, style in (("ranking", "-"), ("decoding", "--")):
                ys = [100 * cell(result, fam, t, n, metric)[0] for n in s["eval_lens"]]
                ax.plot(xs, ys, style, color=color, marker="o", ms=3,
                        label=f"{NAMES[fam]} ({metric})" if t == s["tasks"][0] else None)
        ax.set_xticks(xs, [str(n) for n in s["eval_lens"]], rotation=30)
        ax.set_title(label(t))
        ax.set_xlabel(xlabel)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    fig.legend(loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path)
    plt.close(fig)
