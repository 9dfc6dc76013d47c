"""What a training step saves by not keeping the fast state (``CausalLM.forward(keep_state=False)``).

A training step starts every sequence from a fresh state and discards the state after it, so the
write of each memory after the last chunk it reads is dead work. This times Hope-small and the
width-matched Titans of ``hope_throughput.py`` with the state kept and dropped, interleaved in the
same run (medians over ``--repeats`` steps), and counts each step's FLOPs. Logits, loss and
gradients are the same either way (tests/test_keep_state.py).

Usage:
    python benchmarks/keep_state.py [--threads 1] [--repeats 3] [--lengths 256,512,1024] [--tokens 4096]
        [--quick] [--out result.json] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from hope_throughput import DOCS, ROOT, VOCAB, build, environment, equal_param_configs, write_section
from timing import count_flops, interleaved_medians

from nestlearn.models import CausalLM

MARKERS = ("<!-- keep-state:begin -->", "<!-- keep-state:end -->")
MODELS = ("hope", "titans")


def step_fn(model: CausalLM, batch: int, seq: int, keep_state: bool) -> Callable[[], None]:
    """Forward, backward and AdamW on fixed random tokens; the optimiser is the same for both calls."""
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: the two timed variants see the same weights
    tokens = torch.randint(0, VOCAB, (batch, seq + 1), generator=torch.Generator().manual_seed(seq))

    def step() -> None:
        model(tokens[:, :-1], targets=tokens[:, 1:], keep_state=keep_state).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run(lengths: list[int], tokens: int, repeats: int, quick: bool = False) -> dict:
    configs = equal_param_configs(quick, max(lengths))
    models = {name: build(configs[name]) for name in MODELS}
    rows = []
    for seq in lengths:
        batch = max(1, tokens // seq)
        steps = {f"{n}/{kept}": step_fn(m, batch, seq, kept == "kept")
                 for n, m in models.items() for kept in ("kept", "dropped")}
        medians = interleaved_medians(steps, repeats)
        flops = {key: count_flops(step) / (batch * seq) for key, step in steps.items()}
        for name in MODELS:
            kept, dropped = f"{name}/kept", f"{name}/dropped"
            rows.append({"model": name, "seq_len": seq, "batch": batch,
                         "step_s_kept": medians[kept], "step_s_dropped": medians[dropped],
                         "speedup": medians[kept] / medians[dropped],
                         "flops_per_token_kept": flops[kept], "flops_per_token_dropped": flops[dropped]})
    return {"configs": {n: configs[n] for n in MODELS}, "rows": rows, **environment(),
            "threads": torch.get_num_threads(), "repeats": repeats, "tokens_per_step": tokens}


def markdown(result: dict, command: str) -> str:
    lines = [
        (f"Command: `{command}`. {result['hardware']}, torch {result['torch']}, Python {result['python']}, "
         f"{result['date']}, commit {result['commit']}. Training steps of {result['tokens_per_step']} tokens, "
         f"the four steps interleaved, medians over {result['repeats']} steps."),
        "",
        "| model | seq | batch | step, state kept | step, state dropped | speed-up | MFLOP/token kept | dropped |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['seq_len']} | {r['batch']} | {r['step_s_kept']:.2f} s | "
                     f"{r['step_s_dropped']:.2f} s | {r['speedup']:.2f}× | {r['flops_per_token_kept'] / 1e6:.1f} | "
                     f"{r['flops_per_token_dropped'] / 1e6:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lengths", default="256,512,1024", help="comma-separated sequence lengths")
    p.add_argument("--tokens", type=int, default=4096, help="tokens per training step (batch = tokens / seq)")
    p.add_argument("--quick", action="store_true", help="tiny models, short lengths, one repeat (a smoke test)")
    p.add_argument("--out", help="write the result as JSON to this file")
    p.add_argument("--write-docs", action="store_true", help=f"write the table into {DOCS.relative_to(ROOT)}")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [int(s) for s in args.lengths.split(",")]
    tokens, repeats = args.tokens, args.repeats
    if args.quick:
        lengths, tokens, repeats = [16, 32], 32, 1
    result = run(lengths, tokens, repeats, quick=args.quick)
    text = markdown(result, " ".join(["python benchmarks/keep_state.py", *argv]))
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    if args.write_docs:
        write_section(DOCS, MARKERS, "Training without keeping the fast state (issue 4)", text)
    return result


if __name__ == "__main__":
    main()
