"""Where Hope's parameters go in the LM comparison: Hope variants against Titans at equal parameters.

The LM section (docs/results.md) keeps Hope at d = 64 and widens every baseline to Hope's parameter
count. This script trains Hope variants that spend fewer parameters on CMS levels, each widened to
the same count, beside Titans, with the LM section's training (``nestlearn.eval.suite.lm.train_row``:
KJV bytes, 4 × 512 tokens a step, AdamW lr 3e-3, warm-up a tenth of the steps) at two budgets.
Every run is one JSON cell in ``results/lm/allocation/``; a cell that exists is not run again, so an
interrupted run resumes. docs/design.md S11 reads the table it prints.

Usage:
    python benchmarks/lm_allocation.py [--rows hope,titans] [--steps 150,600] [--seeds 0,1,2] [--report]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path

from timing import cpu_settings

from nestlearn.eval.suite.lm import FULL, hope_model, train_row

ROOT = Path(__file__).resolve().parent.parent
CELLS = ROOT / "results" / "lm" / "allocation"

# name -> (label, model config); widths chosen so every row has about Hope's 338,892 parameters.
ROWS = {
    "hope": ("Hope, three CMS levels of hidden width 4d (the LM section's row)", hope_model(FULL)),
    "hope_hidden2": ("Hope, three levels of hidden width 2d", {**hope_model(FULL, cms={"hidden_mult": 2}), "d_model": 76}),
    "hope_hidden1": ("Hope, three levels of hidden width d", {**hope_model(FULL, cms={"hidden_mult": 1}), "d_model": 84}),
    "hope_one_level": ("Hope, one level (C = 256) of hidden width 4d",
                       {**hope_model(FULL, cms={"chunk_sizes": [256]}), "d_model": 88}),
    "hope_split": ("Hope, three independent levels (Eq 74) of hidden width 4d/3 each: one MLP's width in all",
                   {**hope_model(FULL, cms={"variant": "independent", "hidden": 109}), "d_model": 82}),
    "hope_static_cms": ("Hope, three CMS levels that never write (cms.eta_max = 0: a static MLP chain)",
                        hope_model(FULL, cms={"eta_max": 0.0})),
    "hope_no_cms": ("Hope without CMS (the self-modifying mixer and a SwiGLU MLP)",
                    {**hope_model(FULL, use_cms=False), "d_model": 92}),
    "titans": ("Titans (the LM section's row)", {"family": "titans", "n_layers": 2, "max_seq_len": 512, "d_model": 108}),
}


def cell_path(name: str, steps: int, seed: int) -> Path:
    return CELLS / f"{name}-{steps}-seed{seed}.json"


def run_cell(name: str, steps: int, seed: int) -> dict:
    """Train one row at one budget and seed, and write its cell."""
    budget = dataclasses.asdict(dataclasses.replace(FULL, steps=steps, warmup_steps=steps // 10))
    model = ROWS[name][1]
    with tempfile.TemporaryDirectory() as out:
        result = train_row({"table": "allocation", "key": name, "label": ROWS[name][0], "model": model,
                            "seed": seed}, budget, out)
    cell = {"name": name, "steps": steps, "seed": seed, "model": model, "bpb": result["bpb"],
            "bpb_carried": result["bpb_carried"], "diverged_at": result["diverged_at"],
            "parameters": result["parameters"], "tok_s": result["tok_s"]}
    CELLS.mkdir(parents=True, exist_ok=True)
    cell_path(name, steps, seed).write_text(json.dumps(cell, indent=1) + "\n", encoding="utf-8")
    return cell


def report() -> str:
    """A markdown table of every committed cell: mean ± seed std of the validation bpb per row and budget."""
    cells = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(CELLS.glob("*.json"))]
    budgets = sorted({c["steps"] for c in cells})
    lines = ["| row | d | parameters | " + " | ".join(f"bpb after {s} steps" for s in budgets) + " |",
             "|---|---|---|" + "---|" * len(budgets)]
    for name, (label, model) in ROWS.items():
        mine = [c for c in cells if c["name"] == name]
        if not mine:
            continue
        entries = []
        for s in budgets:
            bpb = [c["bpb"] for c in mine if c["steps"] == s]
            if not bpb:
                entries.append("—")
            elif len(bpb) == 1:
                entries.append(f"{bpb[0]:.3f} (1 seed)")
            else:
                entries.append(f"{statistics.mean(bpb):.3f} ± {statistics.stdev(bpb):.3f} ({len(bpb)} seeds)")
        lines.append(f"| {label} | {model['d_model']} | {mine[0]['parameters']:,} | " + " | ".join(entries) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--steps", default="150,600")
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help="only print the table of the committed cells")
    args = p.parse_args(argv)
    cpu_settings(args.threads)
    if not args.report:
        unknown = [r for r in args.rows.split(",") if r not in ROWS]
        if unknown:
            p.error(f"--rows: unknown {unknown}; allowed: {', '.join(ROWS)}")
        for steps in (int(s) for s in args.steps.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                for name in args.rows.split(","):
                    if not cell_path(name, steps, seed).exists():
                        cell = run_cell(name, steps, seed)
                        print(f"{name} {steps} steps seed {seed}: {cell['bpb']:.4f} bpb", flush=True)
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
