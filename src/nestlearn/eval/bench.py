"""``nestlearn bench TASK``: train several model families on one synthetic task and compare them.

Each family gets a small model (``d_model``, ``n_layers``; its other fields at their defaults), is
trained on fresh batches of the task from the training seed stream, and is scored on a fixed test
batch for each evaluation setting, e.g. the training length (Bin0) and longer lengths (Bin1) of a
formal-language or Chomsky task. The run folder receives ``result.json``, ``results.md`` and
``bench.png`` (accuracy per setting and the training-loss curves).
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from nestlearn.config import from_dict
from nestlearn.data.synthetic import derive_seed, generate
from nestlearn.errors import ConfigError, check_positive, check_range
from nestlearn.eval.tasks import fit_task, task_accuracy, task_model
from nestlearn.models.lm import families


@dataclass
class BenchSpec:
    """Attributes:
        task: a name of ``nestlearn.data.synthetic.TASKS``.
        models: model families to compare.
        train_params: generator parameters of the training batches.
        eval_name: the generator parameter varied at evaluation ("" for none).
        eval_values: its values; the first should be the training value (Bin0).
        steps, batch_size, lr: training.
        d_model, n_layers: model size for every family.
        test_size: rows per evaluation setting.
        seed: seeds the models and both data streams.
    """

    task: str
    models: tuple[str, ...] = ("transformer", "gated_deltanet", "titans")
    train_params: dict[str, Any] = field(default_factory=dict)
    eval_name: str = ""
    eval_values: tuple[Any, ...] = ()
    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    d_model: int = 32
    n_layers: int = 2
    test_size: int = 256
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the ``nestlearn bench`` option that is out of range."""
        for flag, value in (("--steps", self.steps), ("--batch-size", self.batch_size), ("--d-model", self.d_model),
                            ("--n-layers", self.n_layers), ("--test-size", self.test_size)):
            check_positive(flag, value)
        check_range("--seed", self.seed, 0, 2**63 - 1)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("--lr", f"must be a finite number > 0, got {self.lr!r}")
        registry = families()
        unknown = [m for m in self.models if m not in registry]
        if unknown or not self.models:
            raise ConfigError("--models", f"unknown families {unknown or list(self.models)}; allowed: "
                              f"{', '.join(sorted(registry))}")

    def settings(self) -> list[dict[str, Any]]:
        if not self.eval_name:
            return [dict(self.train_params)]
        return [{**self.train_params, self.eval_name: v} for v in self.eval_values]


def setting_label(spec: BenchSpec, setting: dict[str, Any]) -> str:
    return f"{spec.eval_name}={setting[spec.eval_name]}" if spec.eval_name else "test"


def run_bench(spec: BenchSpec, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train and score every family of ``spec``; write the run folder; return the result."""
    spec.validate()
    registry = families()
    settings = spec.settings()
    tests = [generate(spec.task, spec.test_size, derive_seed(spec.seed, "test"), **s) for s in settings]
    generate(spec.task, 1, 0, **spec.train_params)  # the training parameters alone, which --eval may hide above
    # After every check and the test sets: a bad option writes nothing.
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    longest = max(t.inputs.shape[1] for t in tests)
    train_seed = derive_seed(spec.seed, "train")
    result: dict[str, Any] = {"spec": {**spec.__dict__, "models": list(spec.models)}, "models": {},
                              "settings": [setting_label(spec, s) for s in settings],
                              "platform": platform.platform(), "torch": torch.__version__,
                              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    bar = tqdm(total=len(spec.models) * spec.steps, desc=f"bench {spec.task}", unit="step", disable=not progress)
    for name in spec.models:
        cfg = from_dict(registry[name], {"d_model": spec.d_model, "n_layers": spec.n_layers, "max_seq_len": longest},
                        prefix="model")
        torch.manual_seed(spec.seed)
        model = task_model(cfg, tests[0])
        t0 = time.perf_counter()

        def sample(step: int):
            bar.update(1)
            return generate(spec.task, spec.batch_size, train_seed + step, **spec.train_params)

        losses = fit_task(model, sample, spec.steps, spec.lr)
        seconds = time.perf_counter() - t0
        accuracy = {setting_label(spec, s): task_accuracy(model, t) for s, t in zip(settings, tests)}
        result["models"][name] = {"accuracy": accuracy, "losses": losses, "train_seconds": seconds,
                                  "parameters": model.num_parameters(non_embedding=False)}
        bar.set_postfix({name: f"{list(accuracy.values())[0]:.2f}"})
    bar.close()
    (out / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    (out / "results.md").write_text(results_markdown(result), encoding="utf-8")
    plot_bench(result, out / "bench.png")
    return result


def results_markdown(result: dict[str, Any]) -> str:
    spec = result["spec"]
    header = "| model | parameters | " + " | ".join(result["settings"]) + " | train s |"
    lines = [f"# nestlearn bench: {spec['task']}", "",
             f"Training parameters {spec['train_params']}; {spec['steps']} steps of batch {spec['batch_size']}, "
             f"lr {spec['lr']}, d_model {spec['d_model']}, {spec['n_layers']} layers, seed {spec['seed']}; "
             f"{spec['test_size']} test rows per setting. {result['date']}, {result['platform']}, torch {result['torch']}.",
             "", "Accuracy on the scored positions:", "", header, "|" + "---|" * (len(result["settings"]) + 3)]
    for name, r in result["models"].items():
        accs = " | ".join(f"{r['accuracy'][s]:.3f}" for s in result["settings"])
        lines.append(f"| {name} | {r['parameters']:,} | {accs} | {r['train_seconds']:.1f} |")
    return "\n".join(lines) + "\n\n![accuracy and loss](bench.png)\n"


def plot_bench(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    xs = range(len(result["settings"]))
    for name, r in result["models"].items():
        ax_acc.plot(xs, [r["accuracy"][s] for s in result["settings"]], marker="o", label=name)
        losses = torch.tensor(r["losses"])
        smooth = torch.nn.functional.avg_pool1d(losses[None, None], 10, 1).flatten() if len(losses) >= 10 else losses
        ax_loss.plot(smooth.tolist(), label=name)
    ax_acc.set_xticks(list(xs), result["settings"], rotation=30)
    ax_acc.set_ylim(0, 1.02)
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_title(result["spec"]["task"])
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (10-step mean)")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
