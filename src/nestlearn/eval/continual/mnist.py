"""Split-MNIST-5k and Permuted-MNIST-5k (tasks.md §9.3) with a multi-frequency CMS-level classifier.

The classifier (:class:`LevelClassifier`) is an MLP whose hidden layers are CMS levels in the
form of D15, F_ℓ(x) = x + W_out σ(W_in n(x)) with n = RMSNorm, chained slowest first (Eq 73, D14):

    784 → Linear → F_1 → F_2 → … → RMSNorm → Linear → 10.

A level is one MLP group with its own update frequency (D23). It is trained with the
``optimizer`` update signal of D13 (NL-L Eq 71 with the outer loss as the "error component"):
level ℓ accumulates the training-loss gradients of ``periods[ℓ]`` optimiser steps (summed, as in
Eq 71) and takes one AdamW step with that sum, so between its steps it does not change and its
AdamW moments move only on its own steps (:class:`~nestlearn.optim.periodic.PeriodicOptimizer`). With periods
(16, 4, 1) the slowest level moves once per 16 batches, which is the knowledge-consolidating role
the paper gives low-frequency levels (NL-L §7.1, Eqs 70–74). The input projection and the head are
not levels; they step every batch, like the embedding and head of Hope.

Baselines with the very same network: plain fine-tuning with AdamW on every weight every step
(lower bound), and joint training on all tasks at once (upper bound, ACC only).

Scenarios (tasks.md §9.2): Split-MNIST-5k is run Class-IL (one 10-way head, no task identity);
Permuted-MNIST-5k is Domain-IL. FWT is reported "n/a" in Class-IL: a class never trained scores
zero before its task whatever the model, so R[j−1, j] − b_j carries no transfer. The paper's own
continual experiments are not available offline, so these are substitutes with no numeric parity
claim (D24).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nestlearn.data.mnist import load_mnist_5k, stratified_split
from nestlearn.errors import ConfigError, check_positive
from nestlearn.eval.continual.metrics import continual_summary, run_protocol
from nestlearn.layers.norm import RMSNorm
from nestlearn.optim.periodic import (
    STEP_PERIOD_ATTR,
    PeriodicOptimizer,
    periodic_parameters,
)

SPLIT_PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
ARMS = ("adamw", "cms")


@dataclass
class ImageTask:
    """One task of a stream: (n, 784) float inputs and (n,) int64 labels 0–9."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def _standardised(seed: int) -> tuple[Tensor, Tensor, dict[str, np.ndarray]]:
    """MNIST-5k pixels scaled by the train split's mean and std, the labels, and the 80/20 split."""
    images, labels = load_mnist_5k()
    split = stratified_split(labels, seed)
    x = torch.from_numpy(images).float() / 255.0
    mean, std = x[split["train"]].mean(), x[split["train"]].std()
    return (x - mean) / std, torch.from_numpy(labels).long(), split


def split_mnist_tasks(seed: int = 0) -> list[ImageTask]:
    """Five tasks {0,1}, {2,3}, …, {8,9}: 800 train / 200 test images each (tasks.md §9.3)."""
    x, y, split = _standardised(seed)
    tasks = []
    for a, b in SPLIT_PAIRS:
        train = split["train"][np.isin(y[split["train"]].numpy(), (a, b))]
        test = split["test"][np.isin(y[split["test"]].numpy(), (a, b))]
        tasks.append(ImageTask(f"{{{a},{b}}}", x[train], y[train], x[test], y[test]))
    return tasks


def permuted_mnist_tasks(seed: int = 0, num_tasks: int = 10, train_per_task: int = 1000) -> list[ImageTask]:
    """Tasks of one fixed random pixel permutation each (tasks.md §9.3).

    Each task trains on ``train_per_task`` images drawn from the 4,000-image train pool and tests on
    all 1,000 held-out images, both under its permutation. Permutations and draws come from ``seed``.
    """
    check_positive("num_tasks", num_tasks)
    x, y, split = _standardised(seed)
    if not 0 < train_per_task <= len(split["train"]):
        raise ConfigError("train_per_task", f"must lie in [1, {len(split['train'])}], got {train_per_task}")
    rng = np.random.default_rng([seed, 1])
    tasks = []
    for t in range(num_tasks):
        perm = torch.from_numpy(rng.permutation(784))
        train = rng.choice(split["train"], train_per_task, replace=False)
        tasks.append(ImageTask(f"perm {t + 1}", x[train][:, perm], y[train], x[split["test"]][:, perm], y[split["test"]]))
    return tasks


class ResidualLevel(nn.Module):
    """One CMS level, F(x) = x + W_out σ(W_in n(x)) (D15): (batch, d) -> (batch, d)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.norm = RMSNorm(width)
        self.w_in = nn.Linear(width, hidden, bias=False)
        self.w_out = nn.Linear(hidden, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.w_out(F.silu(self.w_in(self.norm(x))))


class LevelClassifier(nn.Module):
    """Input projection, a chain of :class:`ResidualLevel` (slowest first, D14), RMSNorm, head.

    Args:
        in_dim: input features (784).
        width: residual width d.
        levels: number of CMS levels.
        hidden_mult: each level's hidden width as a multiple of d.
        classes: output classes.
    """

    def __init__(self, in_dim: int = 784, width: int = 128, levels: int = 3, hidden_mult: int = 2, classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(in_dim, width)
        self.levels = nn.ModuleList(ResidualLevel(width, hidden_mult * width) for _ in range(levels))
        self.norm = RMSNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        """x: (batch, in_dim) -> logits (batch, classes)."""
        h = self.embed(x)
        for level in self.levels:
            h = level(h)
        return self.head(self.norm(h))


def build_optimizer(model: LevelClassifier, arm: str, periods: Sequence[int], lr: float,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW for the arm: ``"adamw"`` steps every weight every step; ``"cms"`` tags level ℓ with period
    ``periods[ℓ]`` (:data:`~nestlearn.optim.periodic.STEP_PERIOD_ATTR`) and wraps AdamW in
    :class:`~nestlearn.optim.periodic.PeriodicOptimizer`; the input projection and head step every step.
    """
    if arm not in ARMS:
        raise ConfigError("arm", f"must be one of {', '.join(ARMS)}, got {arm!r}")
    if len(periods) != len(model.levels):
        raise ConfigError("periods", f"needs one period per level ({len(model.levels)}), got {tuple(periods)}")
    if min(periods) < 1 or any(a <= b for a, b in itertools.pairwise(periods)):
        raise ConfigError("periods", f"must be positive and strictly decreasing (slowest level first, D14), "
                          f"got {tuple(periods)}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if arm == "adamw":
        return opt
    for level, period in zip(model.levels, periods):
        setattr(level, STEP_PERIOD_ATTR, int(period))
    return PeriodicOptimizer(opt, periodic_parameters(model))


@dataclass
class MnistSettings:
    """Attributes:
        width, levels, hidden_mult: the :class:`LevelClassifier`.
        periods: update period of each level in optimiser steps, slowest first (D16 default (16, 4, 1)).
        epochs: passes over each task's training data (GEM: 1).
        batch_size: images per step (GEM: 10).
        lr, weight_decay: AdamW.
    """

    width: int = 128
    levels: int = 3
    hidden_mult: int = 2
    periods: tuple[int, ...] = (16, 4, 1)
    epochs: int = 1
    batch_size: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.0


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy of ``model`` on (n, in_dim) inputs."""
    was = model.training
    model.eval()
    acc = (model(x).argmax(-1) == y).double().mean().item()
    model.train(was)
    return acc


def _train_epochs(model: LevelClassifier, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
                  settings: MnistSettings, gen: torch.Generator) -> None:
    model.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(y), generator=gen)
        for lo in range(0, len(y), settings.batch_size):
            idx = order[lo:lo + settings.batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


def run_stream(tasks: Sequence[ImageTask], arm: str, settings: MnistSettings, seed: int = 0) -> dict[str, object]:
    """Train one model on the tasks in order and fill R (tasks.md §9.1) with test accuracies.

    The optimiser (and its clock) persists across tasks. Returns ``R``, ``b``, ``seconds`` and
    ``steps`` (optimiser steps per task).
    """
    torch.manual_seed(seed)
    model = LevelClassifier(tasks[0].x_train.shape[1], settings.width, settings.levels, settings.hidden_mult)
    opt = build_optimizer(model, arm, settings.periods, settings.lr, settings.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    R, b = run_protocol(lambda i: _train_epochs(model, opt, tasks[i].x_train, tasks[i].y_train, settings, gen),
                        lambda j: accuracy(model, tasks[j].x_test, tasks[j].y_test), len(tasks))
    steps = [settings.epochs * math.ceil(len(t.y_train) / settings.batch_size) for t in tasks]
    return {"R": R, "b": b, "seconds": time.perf_counter() - t0, "steps": steps}


def run_joint(tasks: Sequence[ImageTask], settings: MnistSettings, seed: int = 0) -> list[float]:
    """Upper bound: the same network and step count, trained with AdamW on all tasks shuffled together.

    Returns the test accuracy on each task.
    """
    torch.manual_seed(seed)
    model = LevelClassifier(tasks[0].x_train.shape[1], settings.width, settings.levels, settings.hidden_mult)
    opt = build_optimizer(model, "adamw", settings.periods, settings.lr, settings.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    x = torch.cat([t.x_train for t in tasks])
    y = torch.cat([t.y_train for t in tasks])
    _train_epochs(model, opt, x, y, settings, gen)
    return [accuracy(model, t.x_test, t.y_test) for t in tasks]


def run_benchmark(tasks: Sequence[ImageTask], settings: MnistSettings, seeds: Sequence[int],
                  class_il: bool) -> dict[str, object]:
    """Every arm over every seed, plus the joint upper bound.

    Returns per arm: the per-seed runs, the seed-mean R, and the mean and std over seeds of every
    metric of :func:`~nestlearn.eval.continual.continual_summary` (FWT is None in Class-IL).
    """
    out: dict[str, object] = {"settings": asdict(settings), "seeds": list(seeds), "tasks": [t.name for t in tasks],
                              "scenario": "Class-IL" if class_il else "Domain-IL", "arms": {}}
    for arm in ARMS:
        runs = [run_stream(tasks, arm, settings, s) for s in seeds]
        summaries = [continual_summary(r["R"], None if class_il else r["b"]) for r in runs]
        out["arms"][arm] = {"R_mean": np.mean([r["R"] for r in runs], axis=0).tolist(),
                            "b_mean": np.mean([r["b"] for r in runs], axis=0).tolist(),
                            "metrics": _mean_std(summaries), "runs": summaries,
                            "seconds": sum(r["seconds"] for r in runs), "steps_per_task": runs[0]["steps"]}
    joint = [run_joint(tasks, settings, s) for s in seeds]
    acc = [float(np.mean(j)) for j in joint]
    out["joint"] = {"per_task_mean": np.mean(joint, axis=0).tolist(), "acc": [float(np.mean(acc)), float(np.std(acc))]}
    return out


def _mean_std(summaries: Sequence[dict[str, object]]) -> dict[str, list[float] | None]:
    """metric -> [mean, std over seeds] (None where the metric is undefined)."""
    keys = ("acc", "bwt", "fwt", "forgetting_max_after", "forgetting_max_all", "aia")
    out: dict[str, list[float] | None] = {}
    for k in keys:
        values = [s[k] for s in summaries]
        out[k] = None if any(v is None for v in values) else [float(np.mean(values)), float(np.std(values))]
    return out
