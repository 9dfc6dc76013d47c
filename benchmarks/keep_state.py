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

import sys

import torch
from hope_throughput import (
    build,
    environment,
    equal_param_configs,
    report,
    step_benchmark_parser,
    step_settings,
    train_step_fn,
)
from timing import count_flops, interleaved_medians

KEY = "keep-state"  # its block in docs/performance.md
MODELS = ("hope", "titans")


def run(lengths: list[int], tokens: int, repeats: int, quick: bool = False) -> dict:
    configs = equal_param_configs(quick, max(lengths))
    models = {name: build(configs[name]) for name in MODELS}
    rows = []
    for seq in lengths:
        batch = max(1, tokens // seq)
        # lr 0: the kept and dropped steps of a model see the same weights.
        steps = {f"{n}/{kept}": train_step_fn(m, batch, seq, keep_state=kept == "kept", lr=0.0)
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
    p = step_benchmark_parser(__doc__.splitlines()[0], "256,512,1024")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    result = run(*step_settings(args), quick=args.quick)
    report(result, markdown(result, " ".join(["python benchmarks/keep_state.py", *argv])), args, KEY,
           "Training without keeping the fast state (issue 4)")
    return result


if __name__ == "__main__":
    main()
