"""Long-stream stability of every recurrent family: finite outputs and the largest fast-weight norm.

Each family's tiny config (configs/<family>-tiny.yaml, d = 64) reads a stream of KJV text and of
random bytes in float32, segment by segment with the carried state, at its defaults and with its
gates at the top of their range (step gate at 0.9 of its bound, momentum 0.9; ``--gates top``).
Reported per family: whether every output was finite, the first non-finite memory (layer, memory,
tokens) if not, and the largest fast-weight norm over the stream (design.md S6). ``--train-steps N``
first trains the model N steps on KJV at the config's own optimiser settings (400 is the demo's
budget; a non-finite training loss is counted and its step skipped). ``--results`` writes the
``stability`` block of docs/results.md.

Usage:
    python benchmarks/stability.py [--tokens 32768] [--families hope,titans] [--gates default,top]
                                   [--train-steps 0,400] [--set model.selfmod.eta_max=0.5] [--json out.json]
                                   [--results docs/results.md] [--from-json a.json b.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from timing import cpu_settings

from nestlearn.data.kjv import kjv_splits
from nestlearn.eval.stability import RECURRENT, read_stream, row_config, stream
from nestlearn.models.lm import CausalLM

ROOT = Path(__file__).resolve().parent.parent


def train(model: CausalLM, cfg, steps: int, seed: int) -> int:
    """``steps`` AdamW steps on KJV at the config's rate, batch and length; returns non-finite losses."""
    from nestlearn.optim.config import build_optimizer

    ids = torch.from_numpy(np.frombuffer(kjv_splits()["train"], dtype=np.uint8).astype(np.int64))
    opt = build_optimizer(model, cfg.optim)
    gen = torch.Generator().manual_seed(seed)
    bad = 0
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - cfg.train.seq_len - 1, (cfg.train.batch_size,), generator=gen)
        batch = torch.stack([ids[s:s + cfg.train.seq_len + 1] for s in starts.tolist()])
        loss = model(batch[:, :-1], targets=batch[:, 1:], keep_state=False).loss
        if not torch.isfinite(loss):
            bad += 1
            opt.zero_grad(set_to_none=True)
            continue
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return bad


def run_family(family: str, gates: str, tokens: int, segment: int, train_steps: int, overrides: list[str],
               seed: int) -> dict:
    cfg, sets = row_config(ROOT / "configs", family, gates, overrides)
    cfg.model.vocab_size = 256
    cfg.model.max_seq_len = max(cfg.model.max_seq_len, tokens)  # attention families cache the whole stream
    torch.manual_seed(seed)
    model = CausalLM(cfg.model)
    result = {"family": family, "gates": gates, "tokens": tokens, "train_steps": train_steps, "overrides": sets}
    if train_steps:
        t0 = time.perf_counter()
        result["nonfinite_train_steps"] = train(model, cfg, train_steps, seed)
        result["train_s"] = round(time.perf_counter() - t0, 1)
    model.eval()
    for kind in ("kjv", "random"):
        result[kind] = read_stream(model, stream(kind, tokens, seed), segment)
    return result


def markdown(rows: list[dict], command: str) -> str:
    """The ``stability`` block of docs/results.md: one line per family, gates and training budget."""
    lines = ["## Long-stream stability (float32)", "",
             f"Every recurrent family's tiny config (d = 64) reads {rows[0]['tokens']:,} tokens of KJV text "
             "and of random bytes with its state carried, at its defaults and with its gates started at the top "
             "of their range (step gate 0.9 of its bound, momentum 0.9), untrained and after training on KJV "
             "(the demo's 400 steps at the config's optimiser settings). Cells: finite or where the first "
             "non-finite value appeared, and the largest fast-weight Frobenius norm over the stream "
             "(docs/design.md S6).", "",
             "| family | gates | trained steps (non-finite) | KJV | random |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [f"finite, {r[k]['max_norm']:.3g}" if r[k]["finite"] else f"**{r[k]['first_nonfinite']}**"
                 for k in ("kjv", "random")]
        trained = f"{r['train_steps']} ({r['nonfinite_train_steps']})" if r["train_steps"] else "0"
        lines.append(f"| {r['family']} | {r['gates']} | {trained} | {cells[0]} | {cells[1]} |")
    large = [f"{r['family']} ({r['gates']} gates, {r['train_steps']} steps, {k}): {r[k]['max_norm_at']}"
             for r in rows for k in ("kjv", "random") if r[k]["finite"] and r[k]["max_norm"] >= 1e4]
    if large:
        lines += ["", "Where the norm passed 10⁴: " + "; ".join(large) + "."]
    lines += ["", f"_`{command}`; flush-denormal on, one thread._"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--segment", type=int, default=2048)
    p.add_argument("--families", default=",".join(RECURRENT))
    p.add_argument("--gates", default="default,top")
    p.add_argument("--train-steps", default="0", help="comma-separated budgets, e.g. 0,400")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("--results", type=Path, metavar="RESULTS_MD", help="write the stability block of this file")
    p.add_argument("--from-json", type=Path, nargs="+", metavar="JSON",
                   help="report rows saved by earlier --json runs instead of running")
    args = p.parse_args(argv)
    if args.from_json:
        rows = [r for path in args.from_json for r in json.loads(path.read_text(encoding="utf-8"))]
        write_results(args.results, rows)
        return 0
    cpu_settings(args.threads)
    rows = []
    for steps in map(int, args.train_steps.split(",")):
        for family in args.families.split(","):
            for gates in args.gates.split(","):
                r = run_family(family, gates, args.tokens, args.segment, steps, args.set, args.seed)
                rows.append(r)
                cells = "  ".join(f"{k}: {'finite' if r[k]['finite'] else 'NON-FINITE ' + str(r[k]['first_nonfinite'])}"
                                  f" max‖W‖ {r[k]['max_norm']:.3g}" for k in ("kjv", "random"))
                extra = f"  train non-finite {r['nonfinite_train_steps']}" if steps else ""
                print(f"{family:17s} {gates:7s} {steps:5d} {cells}{extra}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    if args.results:
        write_results(args.results, rows)
    return 0 if all(r[k]["finite"] for r in rows for k in ("kjv", "random")) else 1


def write_results(path: Path, rows: list[dict]) -> None:
    from markers import write_block
    from run_all import PLACES

    command = "python benchmarks/stability.py --tokens {} --train-steps {}".format(
        rows[0]["tokens"], ",".join(sorted({str(r["train_steps"]) for r in rows}, key=int)))
    write_block(path, "stability", markdown(rows, command), order=PLACES, title="# Results\n")


if __name__ == "__main__":
    sys.exit(main())
