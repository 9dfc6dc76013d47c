"""The ``niah`` section of docs/results.md: S-NIAH-1/2/3 against context length (RULER, tasks.md §2).

Protocol (tasks.md §2.2, CPU tier): byte-level models trained from scratch on the three tasks in
turn at 512 tokens (KJV train split as the essay haystack), scored on the test split at 512, 1K,
2K and 4K tokens with greedy decoding (exact match of the value) and with ranking (the gold value
against 9 distractors of the same type; chance 10 %). [Interp] The CPU tier's 256 is left out: the
prompt, the needle and the answer alone take 330 (S-NIAH-1/2) to 420 bytes (S-NIAH-3).

The paper's Table 1 (spec §9.3) is for models of undisclosed size trained on about 50B tokens at
4K–16K; it is set beside ours for orientation only.

[Interp] The full setting trains 400 steps (not tasks.md's open-ended budget): a Hope step at
512 tokens × 8 takes about 2 s on one core, ten times a Transformer++ step, and the whole suite
has to fit in a few hours on two cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nestlearn.eval.suite import Section
from nestlearn.eval.suite.common import NAMES, command, pct
from nestlearn.eval.suite.probes import (
    ProbeSettings,
    cell,
    compute_minutes,
    grid_table,
    plot_grid,
    run_probe,
    status_lines,
    training_line,
    verdicts,
)
from nestlearn.eval.text import niah_scores

KEY = "niah"
LABELS = {"s_niah_1": "S-NIAH-1 (pass-key)", "s_niah_2": "S-NIAH-2 (number)", "s_niah_3": "S-NIAH-3 (UUID)"}
# NL-L Table 1 (spec §9.3): S-NIAH-1/2/3 at 4K, 8K, 16K, percent.
PAPER_TABLE1 = {
    "Transformer": (88.6, 76.4, 79.8, 100, 98.8, 94.2, 78.0, 69.2, 40.8),
    "Hope-Attention": (100, 100, 100, 100, 98.4, 94.4, 76.8, 68.8, 42.4),
    "Titans": (100, 100, 100, 99.6, 84.6, 75.4, 74.2, 42.8, 21.2),
    "Hope": (100, 100, 100, 99.2, 88.4, 78.2, 73.2, 46.2, 24.8),
}
PAPER_ROW = {"transformer": "Transformer", "hope_attention": "Hope-Attention", "titans": "Titans", "hope": "Hope"}
MODELS = ("transformer", "titans", "gated_deltanet", "hope", "hope_attention")

SETTINGS = {
    "full": ProbeSettings(tasks=tuple(LABELS), models=MODELS, train_len=512, eval_lens=(512, 1024, 2048, 4096),
                          samples=100, steps=400, batch_size=8, lr=3e-3, d_model=64, n_layers=2),
    "quick": ProbeSettings(tasks=tuple(LABELS), models=MODELS, train_len=512, eval_lens=(512, 1024, 2048, 4096),
                           samples=2, steps=8, batch_size=4, lr=3e-3, d_model=32, n_layers=2, samples_per_pass=2),
    "test": ProbeSettings(tasks=("s_niah_1",), models=("transformer", "lstm"), train_len=448, eval_lens=(448, 512),
                          samples=2, steps=2, batch_size=2, lr=3e-3, d_model=16, n_layers=1),
}


def claims(result: dict[str, Any]) -> list[str]:
    s = result["settings"]
    longest = max(s["eval_lens"])
    out = []
    for metric in ("ranking", "decoding"):
        at = {f: sum(cell(result, f, t, longest, metric)[0] for t in s["tasks"]) / len(s["tasks"]) for f in s["models"]}
        order = sorted(at, key=at.get, reverse=True)
        out.append(f"- Mean {metric} accuracy over the tasks at {longest} tokens, best first: "
                   + ", ".join(f"{NAMES[f]} {pct(at[f])} %" for f in order) + ".")
    if "hope" in s["models"]:
        ref = [f for f in ("transformer", "titans") if f in s["models"]]
        for f in ref:
            wins = sum(cell(result, "hope", t, n, "ranking")[0] > cell(result, f, t, n, "ranking")[0]
                       for t in s["tasks"] for n in s["eval_lens"])
            out.append(f"- Hope ranks better than {NAMES[f]} in {wins} of {len(s['tasks']) * len(s['eval_lens'])} "
                       "task × length cells (paper, at 4K–16K: Hope ≥ Titans on every S-NIAH cell but one, "
                       "and ≥ Transformer on S-NIAH-1, below it on S-NIAH-2/3 at 8K–16K).")
    return out + status_lines(result, chance=0.1)


def paper_table() -> str:
    head = "| model | " + " | ".join(f"S{i}-{k}" for i in (1, 2, 3) for k in ("4K", "8K", "16K")) + " |"
    lines = [head, "|---|" + "---|" * 9]
    lines += [f"| {row} | " + " | ".join(f"{v:g}" for v in vals) + " |" for row, vals in PAPER_TABLE1.items()]
    return "\n".join(lines)


def markdown(result: dict[str, Any], quick: bool, seed: int, plot_name: str) -> str:
    s = result["settings"]
    label = LABELS.get
    lines = [f"- Command: `{command(KEY, quick, seed)}`",
             f"- Seeds: {', '.join(map(str, result['seeds']))}; {compute_minutes(result):.1f} CPU-min of training and scoring.",
             (f"- Protocol (tasks.md §2.2): byte-level, trained from scratch on {', '.join(label(t, t) for t in s['tasks'])} "
             f"in turn at {s['train_len']} bytes (KJV train split), {s['steps']} steps of batch {s['batch_size']}, AdamW "
             f"lr {s['lr']}; every model d_model {s['d_model']}, {s['n_layers']} layers. Scored on the KJV test split, "
             f"{s['samples']} samples per cell, needle depth uniform over RULER's 40 depths."),
             training_line(result),
             "- Calibration (the strongest baseline's ranking accuracy at the shortest length; tasks.md §1):",
             *("  " + line for line in verdicts(result, lambda t: label(t, t)))]
    if quick:
        lines.append("- **Quick setting**: eight training steps and 2 samples per cell; a smoke run, not evidence.")
    lines += ["", "Ranking accuracy (%; gold value strictly above 9 same-type distractors, chance 10 %):", "",
              grid_table(result, "ranking", lambda t: label(t, t)), "",
              "Decoding accuracy (%; greedy, exact match of the value):", "",
              grid_table(result, "decoding", lambda t: label(t, t)), "",
              f"![S-NIAH accuracy against context length]({plot_name})", "",
              "Paper (NL-L Table 1, spec §9.3; large models, about 50B tokens, lengths 4K–16K):", "", paper_table(), "",
              "How close to the paper:", *claims(result),
              ("- Scale: these are models of a few hundred thousand parameters trained for minutes at 512 tokens; "
              "the paper's numbers are not reachable at this scale, only the ordering of the models and their decay "
              "with length are comparable.")]
    return "\n".join(lines)


def section(quick: bool, out_dir: Path, seed: int = 0, *, settings: ProbeSettings | None = None,
            jobs: int = 1) -> Section:
    """Run S-NIAH-1/2/3 and return the section of docs/results.md (``settings``: tests; ``jobs`` processes
    train the model × seed cells, finished cells in ``out_dir/cells`` are reused)."""
    s = settings or SETTINGS["quick" if quick else "full"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = run_probe(KEY, s, niah_scores, out_dir, seed, jobs)
    plot_name = "results_niah.png"
    plot_grid(result, out_dir / plot_name, lambda t: LABELS.get(t, t), "context length (bytes)")
    return Section(KEY, "Needle in a haystack: S-NIAH-1/2/3 (RULER, byte level)",
                   markdown(result, quick, seed, plot_name), result)
