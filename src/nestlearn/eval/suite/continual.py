"""The ``continual`` section of docs/results.md: the three continual-learning benchmarks of issue 6.

(a) Split-MNIST-5k (Class-IL) and Permuted-MNIST-5k (Domain-IL) with a CMS-level classifier
    (levels stepped every 16 / 4 / 1 optimiser steps, D13 ``optimizer`` signal, D23) against
    plain AdamW fine-tuning and a joint-training upper bound (:mod:`nestlearn.eval.continual.mnist`);
(b) in-context class-incremental learning: tasks presented one after another in one context,
    queried on earlier tasks, for every model family (:mod:`nestlearn.eval.continual.icl`);
(c) continual language modelling KJV Old Testament → Python standard library → KJV New Testament,
    Hope against Transformer++ at equal parameters, R in bits per byte
    (:mod:`nestlearn.eval.continual.lm`).

Metrics are those of tasks.md §9.1 (:mod:`nestlearn.eval.continual.metrics`). The paper's continual
experiments are figure-only and use data not available offline (D24), so nothing here is compared
numerically with the paper. Run on its own with ``python -m nestlearn.eval.suite.continual [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nestlearn.data.mnist import describe_mnist_5k
from nestlearn.eval.continual.icl import ICLSettings, ICLSpec, chance_levels, run_icl
from nestlearn.eval.continual.lm import HOPE_SELFMOD, LMStreamSettings, run_lm_benchmark
from nestlearn.eval.continual.mnist import (
    MnistSettings,
    permuted_mnist_tasks,
    run_benchmark,
    split_mnist_tasks,
)
from nestlearn.eval.suite import Section
from nestlearn.eval.suite.common import run_cells

KEY = "continual"
TITLE = "Continual learning: Split/Permuted-MNIST-5k, in-context class-incremental, continual LM"


@dataclass(frozen=True)
class Budget:
    """Everything quick and full mode differ in.

    Attributes:
        mnist: classifier and training of benchmark (a).
        mnist_seeds: seeds of (a); metrics are mean ± std over them.
        permuted_tasks: tasks of Permuted-MNIST-5k (tasks.md §9.3: 10 at the CPU tier).
        icl: benchmark (b).
        lm: benchmark (c).
        threads: torch threads.
    """

    mnist: MnistSettings
    mnist_seeds: tuple[int, ...]
    permuted_tasks: int
    icl: ICLSettings
    lm: LMStreamSettings
    threads: int = 1


QUICK = Budget(mnist=MnistSettings(width=64), mnist_seeds=(0,), permuted_tasks=10,
               icl=ICLSettings(ICLSpec(num_tasks=4, pairs_per_task=1, classes_per_task=2, num_keys=8),
                               d_model=32, steps=250, batch_size=32, lr=1e-2, test_streams=128),
               lm=LMStreamSettings(d_model=32, n_layers=2, seq_len=64, batch_size=8, steps_per_stage=60,
                                   warmup=10, eval_bytes=4096))
# [Interp] Sized so that the whole suite runs in a few hours on two cores: a Hope step costs about ten
# Transformer++ steps on CPU, so meta-training and LM stages are shorter than a GPU run would use.
FULL = Budget(mnist=MnistSettings(width=128), mnist_seeds=(0, 1, 2, 3, 4), permuted_tasks=10,
              icl=ICLSettings(ICLSpec(num_tasks=4, pairs_per_task=2, classes_per_task=2, num_keys=16),
                              d_model=64, steps=1500, batch_size=32, lr=3e-3, test_streams=512),
              lm=LMStreamSettings(d_model=64, n_layers=2, seq_len=128, batch_size=16, steps_per_stage=200,
                                  warmup=20, eval_bytes=65536))


def _seeded(budget: Budget, seed: int) -> Budget:
    return replace(budget, mnist_seeds=tuple(s + seed for s in budget.mnist_seeds))


def run_part(budget: Budget, seed: int, part: str) -> dict[str, Any]:
    """One benchmark: ``"mnist"`` (a), ``"icl"`` (b) or ``"lm"`` (c); its results with its timing."""
    t0 = time.perf_counter()
    if part == "mnist":
        out = {"split_mnist": run_benchmark(split_mnist_tasks(seed), budget.mnist, budget.mnist_seeds, class_il=True),
               "permuted_mnist": run_benchmark(permuted_mnist_tasks(seed, budget.permuted_tasks), budget.mnist,
                                               budget.mnist_seeds, class_il=False),
               "mnist_data": describe_mnist_5k()}
    elif part == "icl":
        out = {"icl": run_icl(budget.icl, seed)}
    elif part == "lm":
        out = {"lm": run_lm_benchmark(budget.lm, seed)}
    else:
        raise ValueError(f"part must be one of mnist, icl, lm; got {part!r}")
    # Plain containers, so the result can be stored and reloaded; NaN stays a float (a diverged run).
    return _jsonable({**out, f"{part}_seconds": time.perf_counter() - t0}, nan=float("nan"))


def run(budget: Budget, out_dir: Path, seed: int = 0, parts: tuple[str, ...] = ("mnist", "icl", "lm"),
        jobs: int = 1) -> dict[str, Any]:
    """Run the requested benchmarks (``jobs`` processes; finished ones in ``out_dir/cells`` are reused)."""
    cells = {part: (budget, seed, part) for part in parts}
    settings = {"budget": _jsonable(asdict(budget)), "seed": seed}
    results: dict[str, Any] = {}
    for done in run_cells(run_part, cells, settings, Path(out_dir) / "cells", jobs, "continual").values():
        results.update(done)
    return results


def section(quick: bool, out_dir: Path, seed: int = 0, jobs: int = 1) -> Section:
    """Run the three benchmarks (``quick``: the smoke budget) and return the Markdown section."""
    budget = _seeded(QUICK if quick else FULL, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(budget.threads)
    try:
        t0 = time.perf_counter()
        results = run(budget, Path(out_dir), seed, jobs=jobs)
        wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    out = Path(out_dir) / KEY
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(results, out)
    command = "python benchmarks/run_all.py --only continual" + (" --quick" if quick else "") + (f" --seed {seed}" if seed else "")
    meta = {"command": command, "seed": seed, "quick": quick, "wall_s": wall, "platform": platform.platform(),
            "torch": torch.__version__, "threads": budget.threads, "jobs": jobs, "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (out / "continual_results.json").write_text(json.dumps({"meta": meta, **_jsonable(results)}, indent=1), encoding="utf-8")
    links = {name: _link(path, Path(out_dir)) for name, path in plots.items()}
    return Section(KEY, TITLE, markdown(results, meta, links), {"meta": meta, **_jsonable(results)})


# -- Markdown ------------------------------------------------------------------------------------------
def _pm(metric: list[float] | None, scale: float = 1.0, digits: int = 3) -> str:
    if metric is None:
        return "n/a"
    mean, std = metric
    return f"{scale * mean:.{digits}f} ± {std:.{digits}f}"


def _num(value: float | None, digits: int = 3, scale: float = 1.0) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{scale * value:.{digits}f}"


def _matrix_table(R: list[list[float]], rows: list[str], cols: list[str], digits: int = 2,
                  first: str = "after \\ on") -> list[str]:
    lines = [f"| {first} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in zip(rows, R):
        lines.append(f"| {name} | " + " | ".join(_num(v, digits) for v in row) + " |")
    return lines


def markdown(results: dict[str, Any], meta: dict[str, Any], links: dict[str, str]) -> str:
    """The section body from :func:`run`'s results."""
    lines = [("Metrics of tasks.md §9.1: ACC (mean final score), F (forgetting, max over stages after a task "
             "was trained, minus final), BWT, FWT (GEM) and AIA. The paper's continual-learning results "
             "(NL-L Figs. 6–7) are figure-only and use data not available offline, so these benchmarks are "
             "substitutes and make no numeric parity claim (D24)."), ""]
    if "split_mnist" in results:
        lines += _mnist_markdown(results, links)
    if "icl" in results:
        lines += _icl_markdown(results["icl"], links)
    if "lm" in results:
        lines += _lm_markdown(results["lm"], links)
    timing = ", ".join(f"{part} {results[part + '_seconds']:.0f} s" for part in ("mnist", "icl", "lm")
                       if part + "_seconds" in results)
    lines += ["### Run", "",
              (f"- Command: `{meta['command']}` ({'quick smoke budget' if meta['quick'] else 'CPU tier'}); "
              f"alone: `python -m nestlearn.eval.suite.continual{' --quick' if meta['quick'] else ''}`."),
              (f"- Seed {meta['seed']}; {meta['date']}; `{meta['platform']}`, {meta['cpu_count']} CPUs, "
              f"torch {meta['torch']} with {meta['threads']} thread(s); compute per benchmark: {timing} "
              f"(wall time of this invocation {meta['wall_s']:.0f} s; stored benchmarks are reused)."),
              "- Numbers: `continual/continual_results.json` (full R and b of every run)."]
    return "\n".join(lines) + "\n"


def _mnist_markdown(results: dict[str, Any], links: dict[str, str]) -> list[str]:
    split, perm = results["split_mnist"], results["permuted_mnist"]
    s = split["settings"]
    seeds = split["seeds"]
    lines = ["### (a) Split-MNIST-5k and Permuted-MNIST-5k: CMS levels vs AdamW", "",
             (f"Classifier: 784 → {s['width']} → {s['levels']} CMS levels F(x) = x + W_out SiLU(W_in RMSNorm(x)) "
             f"(hidden {s['hidden_mult'] * s['width']}, D15) → RMSNorm → 10. **cms**: level ℓ accumulates the "
             f"training-loss gradients of {'/'.join(map(str, s['periods']))} steps (slowest first) and takes one "
             "AdamW step with their sum (D13 `optimizer` signal, NL-L Eq 71, D23: a level is one MLP group with "
             "its own update period), input projection and head every step. **adamw**: the same network, every "
             "weight every step (lower bound). **joint**: the same network trained on all tasks shuffled "
             f"together (upper bound). AdamW lr {s['lr']:g}, batch {s['batch_size']}, {s['epochs']} pass(es) per "
             f"task (GEM's single pass); mean ± std over seeds {', '.join(map(str, seeds))}."), "",
             "| benchmark | scenario | learner | ACC | F | BWT | FWT | AIA |", "|---|---|---|---|---|---|---|---|"]
    for label, res in (("Split-MNIST-5k (5 tasks)", split), (f"Permuted-MNIST-5k ({len(perm['tasks'])} tasks)", perm)):
        for arm, r in res["arms"].items():
            m = r["metrics"]
            lines.append(f"| {label} | {res['scenario']} | {arm} | {_pm(m['acc'])} | {_pm(m['forgetting_max_after'])} | "
                         f"{_pm(m['bwt'])} | {_pm(m['fwt'])} | {_pm(m['aia'])} |")
        lines.append(f"| {label} | {res['scenario']} | joint (upper bound) | {_pm(res['joint']['acc'])} | – | – | – | – |")
    lines += ["", ("FWT is n/a in Class-IL: an untrained class scores 0 whatever the model, so R[j−1, j] − b_j "
              "measures no transfer. Seed-mean accuracy matrices (rows: after training on task i; columns: test "
              "task j):"), "", f"![Split/Permuted-MNIST-5k accuracy matrices]({links['mnist']})", ""]
    for label, res in (("Split-MNIST-5k", split), ("Permuted-MNIST-5k", perm)):
        cms, adamw = res["arms"]["cms"]["metrics"], res["arms"]["adamw"]["metrics"]
        lines.append(f"- {label}: cms − adamw ACC = {cms['acc'][0] - adamw['acc'][0]:+.3f}, forgetting "
                     f"{cms['forgetting_max_after'][0]:.3f} (cms) vs {adamw['forgetting_max_after'][0]:.3f} (adamw); "
                     f"joint training reaches {res['joint']['acc'][0]:.3f}.")
    lines += [("- Neither learner uses replay, regularisation or task identity; in the cms arm the input "
              "projection and the shared head still step every batch."), ""]
    return lines


def _icl_markdown(icl: dict[str, Any], links: dict[str, str]) -> list[str]:
    spec, st = icl["spec"], icl["settings"]
    T = spec["num_tasks"]
    chance = chance_levels(ICLSpec(**spec))
    lines = ["### (b) In-context class-incremental learning", "",
             f"One context presents {T} tasks in order; task t is {spec['pairs_per_task']} key → label pair(s) "
             f"whose labels are task t's own {spec['classes_per_task']} new classes (Class-IL: no task identity; "
             f"keys drawn afresh per stream from {spec['num_keys']}, so the associations exist only in context). "
             "R[i, j] = accuracy of a query on task j's keys after tasks 1…i were presented, read with the "
             "stateful API (the query continues the presentation's fast state: KV cache or memory weights). "
             f"Every family is meta-trained on such streams (1…{T} tasks presented): d_model {st['d_model']}, "
             f"{st['n_layers']} layers, {st['steps']} AdamW steps of batch {st['batch_size']}, lr {st['lr']:g}; "
             f"memory chunks 4 and CMS levels every 16/8/4 tokens to fit the short streams [Interp]; "
             f"{st['test_streams']} test streams. Chance after i tasks: 1/({spec['classes_per_task']}i) = "
             + ", ".join(f"{c:.3f}" for c in chance) + ".", "",
             "| family | parameters | ACC | F | BWT | mean R[j, j] | AIA | final meta-train loss |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in icl["families"].items():
        diag = float(np.mean(np.diag(np.array(r["R"]))))
        lines.append(f"| {name} | {r['parameters']:,} | {_num(r['acc'])} | {_num(r['forgetting_max_after'])} | "
                     f"{_num(r['bwt'])} | {diag:.3f} | {_num(r['aia'])} | {r['final_loss']:.3f} |")
    lines += ["", f"![in-context accuracy matrices]({links['icl']})", ""]
    return lines


def _lm_markdown(lm: dict[str, Any], links: dict[str, str]) -> list[str]:
    st = lm["settings"]
    domains = lm["domains"]
    hope, tf = lm["models"]["hope"], lm["models"]["transformer"]
    code = lm["data"].get("python_stdlib")
    code_note = (f"Code domain: CPython {code['python']} stdlib, {code['files']} files, {code['bytes']:,} bytes, "
                 f"sha256 {code['sha256'][:16]}… (data.md §2); " if code else "")
    scored = f"its first {st['eval_bytes']:,} bytes" if st["eval_bytes"] else "all of it"
    lines = ["### (c) Continual language modelling: KJV Old Testament → Python stdlib → KJV New Testament", "",
             (f"Byte-level; {st['steps_per_stage']} AdamW steps per stage (batch {st['batch_size']} lanes of "
             f"{st['seq_len']} bytes read contiguously, lr {st['lr']:g} after {st['warmup']} warm-up steps, one "
             "optimiser across stages); after each stage every domain's test split is scored "
             f"({scored}; state reset per window). "
             f"Hope (d_model {lm['configs']['hope']['d_model']}, {hope['parameters']:,} parameters) carries its "
             "fast state across the windows of a stage; Transformer++ (d_model "
             f"{lm['configs']['transformer']['d_model']}, {tf['parameters']:,} parameters, the width closest to "
             f"Hope's count) reads each window afresh. Hope's self-modifying memory uses {HOPE_SELFMOD} "
             "[Interp: with the defaults, training with the carried state diverged within 25 steps]. "
             f"{code_note}third domain per tasks.md §9.3. Scores: R = −bpb, so BWT < 0 and F > 0 mean forgetting, in bits "
             "per byte."), "",
             "| model | parameters | final mean bpb | F (bpb) | BWT (bpb) | FWT (bpb) | AIA | diverged |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in lm["models"].items():
        lines.append(f"| {name} | {r['parameters']:,} | {_num(r['final_bpb'])} | {_num(r['forgetting_max_after'])} | "
                     f"{_num(r['bwt'])} | {_num(r['fwt'])} | {_num(r['aia'], scale=-1.0)} bpb | {r['diverged'] or 'no'} |")
    for name, r in lm["models"].items():
        lines += ["", f"{name}: bits per byte on each domain's test split (rows: after stage)", ""]
        lines += _matrix_table([r["bpb_init"]] + r["bpb"], ["init"] + [f"{i + 1}: {d}" for i, d in enumerate(domains)],
                               domains, digits=3)
    lines += ["", f"![continual LM bpb matrices]({links['lm']})", ""]
    return lines


# -- plots ---------------------------------------------------------------------------------------------
def write_plots(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Heat maps of R: MNIST (both benchmarks × both learners), in-context (per family), LM (bpb per model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def heat(ax, M, title, fmt="{:.2f}", cmap="viridis", vmin=0.0, vmax=1.0):
        M = np.array(M, dtype=float)
        image = ax.imshow(M, cmap=cmap, vmin=vmin, vmax=vmax)
        if M.shape[0] <= 10:
            for (i, j), v in np.ndenumerate(M):
                r, g, b_, _ = image.cmap(image.norm(v))
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=6,
                        color="k" if 0.299 * r + 0.587 * g + 0.114 * b_ > 0.5 else "w")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("test task j", fontsize=8)
        ax.set_ylabel("after task i", fontsize=8)
        ax.set_xticks(range(M.shape[1]), [str(k + 1) for k in range(M.shape[1])], fontsize=7)
        ax.set_yticks(range(M.shape[0]), [str(k + 1) for k in range(M.shape[0])], fontsize=7)

    plots: dict[str, Path] = {}
    if "split_mnist" in results:
        fig, axes = plt.subplots(1, 4, figsize=(16, 4), dpi=110)
        k = 0
        for label, res in (("Split", results["split_mnist"]), ("Permuted", results["permuted_mnist"])):
            for arm in ("adamw", "cms"):
                heat(axes[k], res["arms"][arm]["R_mean"], f"{label}-MNIST-5k, {arm}")
                k += 1
        fig.tight_layout()
        plots["mnist"] = out / "continual_mnist.png"
        fig.savefig(plots["mnist"])
        plt.close(fig)
    if "icl" in results:
        fams = results["icl"]["families"]
        fig, axes = plt.subplots(1, len(fams), figsize=(3.3 * len(fams), 3.4), dpi=110, squeeze=False)
        for ax, (name, r) in zip(axes[0], fams.items()):
            heat(ax, r["R"], name)
        fig.tight_layout()
        plots["icl"] = out / "continual_icl.png"
        fig.savefig(plots["icl"])
        plt.close(fig)
    if "lm" in results:
        lm = results["lm"]
        models = lm["models"]
        finite = [v for r in models.values() for v in np.ravel(r["bpb"]) if np.isfinite(v)]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 8.0)
        fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), dpi=110, squeeze=False)
        for ax, (name, r) in zip(axes[0], models.items()):
            heat(ax, r["bpb"], f"{name}: test bpb", fmt="{:.2f}", cmap="viridis_r", vmin=lo, vmax=hi)
            ax.set_xticks(range(len(lm["domains"])), lm["domains"], fontsize=7)
            ax.set_yticks(range(len(lm["domains"])), lm["domains"], fontsize=7)
            ax.set_xlabel("test domain", fontsize=8)
            ax.set_ylabel("after stage", fontsize=8)
        fig.tight_layout()
        plots["lm"] = out / "continual_lm.png"
        fig.savefig(plots["lm"])
        plt.close(fig)
    return plots


def _link(path: Path, out_dir: Path) -> str:
    """``path`` relative to the docs/ folder that holds ``out_dir`` (relative to ``out_dir`` if none does)."""
    base = next((p for p in [out_dir.resolve(), *out_dir.resolve().parents] if p.name == "docs"), out_dir.resolve())
    return Path(os.path.relpath(path.resolve(), base)).as_posix()


def _jsonable(obj: Any, nan: Any = None) -> Any:
    """Plain Python containers and numbers; non-finite floats become ``nan`` (None: strict JSON)."""
    if isinstance(obj, dict):
        return {k: _jsonable(v, nan) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, nan) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist(), nan)
    if isinstance(obj, (np.floating, float)):
        return nan if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the continual-learning section alone.")
    parser.add_argument("--quick", action="store_true", help="the smoke budget (a few minutes on 2 cores)")
    parser.add_argument("--out", default="runs/continual", help="folder for the JSON, plots and section.md")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    sec = section(args.quick, out, args.seed)
    (out / KEY / "section.md").write_text(f"## {sec.title}\n\n{sec.markdown}", encoding="utf-8")
    print(f"wrote {out / KEY}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
