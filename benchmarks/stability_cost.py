"""What the stability switches cost: training tokens/s of Hope and Titans with and without them.

Hope is hope-small (d = 256, 4 blocks) and Titans its width-matched baseline, as in
benchmarks/hope_throughput.py. Each is timed at its defaults (the switches of docs/design.md S1–S5)
and at the paper's literal reading (Hope: ``momentum_form="scaled"``, ``eigen="positive"``,
``step_norm="none"``, ``write_bound=0``, ``retain="zero"``, and the CMS levels' ``step_norm="none"``;
Titans: ``momentum="titans"``, ``write_bound=0``), the four
training steps interleaved in one run, medians over ``--repeats``. The issue's budget: at most 10 %.
A step whose loss is not finite fails the run before any time is reported.

Usage:
    python benchmarks/stability_cost.py [--lengths 512,2048] [--tokens 4096] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hope_throughput import build, environment, equal_param_configs, train_step_fn
from timing import cpu_settings, interleaved_medians

PAPER = {"hope": {"selfmod": {"momentum_form": "scaled", "eigen": "positive", "step_norm": "none", "write_bound": 0.0,
                             "retain": "zero"},
                  "cms": {"step_norm": "none"}},
         "titans": {"momentum": "titans", "write_bound": 0.0}}


def configs(quick: bool, max_seq_len: int) -> dict[str, dict]:
    """name -> model config: hope, hope_paper, titans, titans_paper."""
    base = equal_param_configs(quick, max_seq_len)
    out = {}
    for family in ("hope", "titans"):
        out[family] = base[family]
        literal = dict(base[family])
        for key, value in PAPER[family].items():
            literal[key] = {**literal.get(key, {}), **value} if isinstance(value, dict) else value
        out[f"{family}_paper"] = literal
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="512,2048")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    cpu_settings(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    cfgs = configs(args.quick, max(lengths))
    models = {name: build(cfg) for name, cfg in cfgs.items()}
    rows = []
    for seq in lengths:
        batch = max(1, args.tokens // seq)
        medians = interleaved_medians({n: train_step_fn(m, batch, seq) for n, m in models.items()}, args.repeats)
        for family in ("hope", "titans"):
            stable, paper = batch * seq / medians[family], batch * seq / medians[f"{family}_paper"]
            rows.append({"model": family, "seq_len": seq, "batch": batch, "tokens_per_s": stable,
                         "paper_tokens_per_s": paper, "cost": 1 - stable / paper})
            print(f"{family:7s} seq {seq:5d}: {stable:8.0f} tok/s with the switches, {paper:8.0f} without "
                  f"(cost {100 * (1 - stable / paper):+.1f} %)", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "configs": cfgs, "repeats": args.repeats, **environment()},
                                       indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
