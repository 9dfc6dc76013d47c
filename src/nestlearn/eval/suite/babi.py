"""The ``babi`` section of docs/results.md: bAbI-style qa1–qa5 hidden in KJV haystacks (BABILong-style, tasks.md §3).

Protocol (tasks.md §3.2, CPU tier): byte-level models trained from scratch on the five tasks in
turn at 512 bytes (KJV train split as background), scored on the test split at 0 (the story
alone), 256, 512, 1K, 2K and 4K bytes with BABILong's decoding rule and with ranking over the
task's answer set. The stories come from the project's own generator: results are "bAbI-style",
never bAbI. The paper's BABILong result (spec §9.4) is figure-only, so only its claims are quoted.

[Interp] The full setting trains 400 steps and scores 50 samples per task and length (tasks.md:
100): Hope reads about 5K tokens/s on one core, so 100 samples × 5 tasks × 6 lengths alone would
take half an hour per Hope model, and the whole suite has to fit in a few hours on two cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nestlearn.data.synthetic.babi import BABI_TASKS
from nestlearn.eval.suite import Section
from nestlearn.eval.suite.common import NAMES, command, pct
from nestlearn.eval.suite.probes import (
    ProbeSettings,
    compute_minutes,
    grid_table,
    plot_grid,
    run_probe,
    status_lines,
    task_mean,
    training_line,
    verdicts,
)
from nestlearn.eval.text import babi_scores

KEY = "babi"
TASKS = tuple(f"babi_{t}" for t in BABI_TASKS)
CHANCE = "1/6 for qa1–qa4 (six locations), 1/4 or 1/3 for qa5 (actors or objects)"
# Per task, for the at-chance test; qa5 takes the larger of its two levels.
CHANCE_LEVELS = {"babi_qa1": 1 / 6, "babi_qa2": 1 / 6, "babi_qa3": 1 / 6, "babi_qa4": 1 / 6, "babi_qa5": 1 / 3}
MODELS = ("transformer", "titans", "gated_deltanet", "hope", "hope_attention")

SETTINGS = {
    "full": ProbeSettings(tasks=TASKS, models=MODELS, train_len=512, eval_lens=(0, 256, 512, 1024, 2048, 4096),
                          samples=50, steps=400, batch_size=8, lr=3e-3, d_model=64, n_layers=2),
    "quick": ProbeSettings(tasks=TASKS, models=MODELS, train_len=512, eval_lens=(0, 512, 4096),
                           samples=2, steps=8, batch_size=4, lr=3e-3, d_model=32, n_layers=2, samples_per_pass=2),
    "test": ProbeSettings(tasks=("babi_qa1",), models=("transformer", "lstm"), train_len=0, eval_lens=(0, 256),
                          samples=2, steps=2, batch_size=2, lr=3e-3, d_model=16, n_layers=1),
}


def label(task: str) -> str:
    return task.removeprefix("babi_")


def claims(result: dict[str, Any]) -> list[str]:
    s = result["settings"]
    lens = s["eval_lens"]
    out = []
    for metric in ("ranking", "decoding"):
        rows = []
        for f in s["models"]:
            first, last = task_mean(result, f, lens[0], metric), task_mean(result, f, lens[-1], metric)
            rows.append(f"{NAMES[f]} {pct(first)} → {pct(last)}")
        out.append(f"- Mean {metric} accuracy over qa1–qa5, length {lens[0]} → {lens[-1]}: " + "; ".join(rows) + ".")
    if "hope" in s["models"]:
        others = [f for f in s["models"] if f != "hope"]
        beat = [NAMES[f] for f in others
                if task_mean(result, "hope", lens[-1], "ranking") > task_mean(result, f, lens[-1], "ranking")]
        out.append(f"- At {lens[-1]} bytes Hope's mean ranking accuracy is above: "
                   + (", ".join(beat) if beat else "none of the other models") + ".")
    return out + status_lines(result, chance={t: CHANCE_LEVELS[t] for t in s["tasks"]})


def markdown(result: dict[str, Any], quick: bool, seed: int, plot_name: str) -> str:
    s = result["settings"]
    lines = [f"- Command: `{command(KEY, quick, seed)}`",
             f"- Seeds: {', '.join(map(str, result['seeds']))}; {compute_minutes(result):.1f} CPU-min of training and scoring.",
             (f"- Protocol (tasks.md §3): bAbI-style {', '.join(label(t) for t in s['tasks'])} (the project's own "
             f"generator), trained from scratch in turn at {s['train_len']} bytes of KJV train-split background, "
             f"{s['steps']} steps of batch {s['batch_size']}, AdamW lr {s['lr']}; every model d_model {s['d_model']}, "
             f"{s['n_layers']} layers. Scored on the KJV test split, {s['samples']} samples per cell; "
             "length 0 is the story alone."),
             training_line(result),
             "- Calibration (the strongest baseline's ranking accuracy at the shortest length; tasks.md §1):",
             *("  " + line for line in verdicts(result, label))]
    if quick:
        lines.append("- **Quick setting**: eight training steps and 2 samples per cell; a smoke run, not evidence.")
    lines += ["", f"Ranking accuracy (%; the answer strictly first within the task's answer set; chance {CHANCE}):",
              "", grid_table(result, "ranking", label), "",
              "Decoding accuracy (%; BABILong's rule: the first sentence of the greedy output contains the answer):", "",
              grid_table(result, "decoding", label), "",
              f"![bAbI-style accuracy against haystack length]({plot_name})", "",
              ("How close to the paper (NL-L §9.2, Fig. 9, figure-only: fine-tuned Hope keeps its accuracy up to 10M "
              "tokens, where Titans and ARMT drop after 1M; without fine-tuning every small model drops):"),
              *claims(result),
              ("- Scale: the paper's lengths (up to 10M tokens) and its fine-tuned pre-trained models are out of reach "
              "on a CPU; only the trend with haystack length and the ordering of the models are comparable.")]
    return "\n".join(lines)


def section(quick: bool, out_dir: Path, seed: int = 0, *, settings: ProbeSettings | None = None,
            jobs: int = 1) -> Section:
    """Run bAbI-style qa1–qa5 in haystacks and return the section of docs/results.md (``settings``: tests;
    ``jobs`` processes train the model × seed cells, finished cells in ``out_dir/cells`` are reused)."""
    s = settings or SETTINGS["quick" if quick else "full"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = run_probe(KEY, s, babi_scores, out_dir, seed, jobs)
    plot_name = "results_babi.png"
    plot_grid(result, out_dir / plot_name, label, "haystack length (bytes)")
    return Section(KEY, "bAbI-style qa1–qa5 in haystacks (BABILong-style)", markdown(result, quick, seed, plot_name),
                   result)
