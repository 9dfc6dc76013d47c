"""Training throughput of Hope, Titans and Transformer++ at equal parameter count (issue 4).

Hope is the ``hope-small`` model (d = 256, 4 blocks of self-modifying Titans + CMS). Titans (LMM) and
Transformer++ get the same depth and the width whose non-embedding parameter count is closest to
Hope's (printed; within 5 % by construction of the search). Each training step is forward, backward
and an AdamW step on random byte tokens, ``--tokens`` tokens per step (batch = tokens / seq). For
every sequence length the three models are timed in the same run, interleaved step by step, and
each rate is the median over ``--repeats`` steps; ratios are against Transformer++. One more step of
each model runs under torch's FLOP counter (matrix products and attention, a multiply-add counting
2), which gives the arithmetic per token and the rate each model achieves. Their quotient bounds the
ratio: at Transformer++'s arithmetic rate Hope would reach (T++ FLOPs / Hope FLOPs) of its speed.

Issue 4's target: Hope at least 0.5× Transformer++ at 1024 tokens and faster than it at 4096.

Usage:
    python benchmarks/hope_throughput.py [--threads 0] [--repeats 3] [--lengths 256,1024,4096]
        [--tokens 4096] [--quick] [--out result.json] [--write-docs] [--set selfmod.heads=4 ...]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from markers import write_block
from timing import FLUSH_DENORMAL, count_flops, cpu_settings, interleaved_medians, training_outputs

from nestlearn.config import apply_overrides
from nestlearn.errors import ConfigError
from nestlearn.models import CausalLM
from nestlearn.models.lm import match_width, model_config_from_dict
from nestlearn.provenance import git_commit

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "performance.md"
KEY = "hope-throughput"  # its block in docs/performance.md
MODELS = ("hope", "titans", "transformer")
VOCAB = 256
TOLERANCE = 0.05

# hope-small (configs/hope-small.yaml) and a tiny stand-in for --quick.
HOPE = {"d_model": 256, "n_layers": 4, "selfmod": {"chunk_size_memory": 16, "chunk_size_other": 64, "heads": 1},
        "cms": {"chunk_sizes": [512, 128, 32], "variant": "sequential", "hidden_mult": 4}}
HOPE_QUICK = {"d_model": 16, "n_layers": 1, "selfmod": {"chunk_size_memory": 4, "chunk_size_other": 8, "heads": 1},
              "cms": {"chunk_sizes": [16, 8], "step_periods": [2, 1], "variant": "sequential", "hidden_mult": 2}}


def non_embedding_params(cfg: dict) -> int:
    return CausalLM(model_config_from_dict({**cfg, "vocab_size": VOCAB})).num_parameters(non_embedding=True)


def baseline_config(family: str, target: int, n_layers: int, max_seq_len: int, step: int = 16) -> dict:
    """The config (4 heads, width a multiple of ``step``) whose non-embedding parameter count is closest to ``target``."""
    cfg = {"family": family, "n_layers": n_layers, "n_heads": 4, "max_seq_len": max_seq_len}
    d, _ = match_width(cfg, target, step, vocab_size=VOCAB)
    return {**cfg, "d_model": d}


def equal_param_configs(quick: bool, max_seq_len: int, overrides: list[str] | None = None) -> dict[str, dict]:
    """family -> model config dict: Hope (hope-small, or a tiny one, with ``overrides`` such as
    ``selfmod.heads=4`` applied) and width-matched Titans and Transformer++."""
    base = copy.deepcopy(HOPE_QUICK if quick else HOPE)
    hope = {"family": "hope", **apply_overrides(base, overrides or []), "max_seq_len": max_seq_len}
    target = non_embedding_params(hope)
    configs = {"hope": hope}
    for family in ("titans", "transformer"):
        configs[family] = baseline_config(family, target, hope["n_layers"], max_seq_len, step=8 if quick else 16)
    return configs


def build(cfg: dict, seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(model_config_from_dict({**cfg, "vocab_size": VOCAB}))


def train_step_fn(model: CausalLM, batch: int, seq: int, keep_state: bool = False, lr: float = 1e-4) -> Callable[[], None]:
    """One training step (forward, backward, AdamW) on fixed random tokens, by default as the trainer
    runs it (no state kept); ``lr=0`` keeps the weights fixed across steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    tokens = torch.randint(0, VOCAB, (batch, seq + 1), generator=torch.Generator().manual_seed(seq))

    def step():
        loss = model(tokens[:, :-1], targets=tokens[:, 1:], keep_state=keep_state).loss
        loss.backward()
        out = training_outputs(loss, model)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out

    return step


def run(lengths: list[int], tokens: int, repeats: int, quick: bool = False, overrides: list[str] | None = None) -> dict:
    """Measure every model at every length; returns the JSON-ready result."""
    configs = equal_param_configs(quick, max(lengths), overrides)
    models = {name: build(cfg) for name, cfg in configs.items()}
    params = {name: m.num_parameters(non_embedding=True) for name, m in models.items()}
    rows = []
    for seq in lengths:
        batch = max(1, tokens // seq)
        steps = {n: train_step_fn(m, batch, seq) for n, m in models.items()}
        medians = interleaved_medians(steps, repeats)
        flops = {n: count_flops(step) / (batch * seq) for n, step in steps.items()}
        rates = {n: batch * seq / t for n, t in medians.items()}
        for name in MODELS:
            rows.append({"model": name, "seq_len": seq, "batch": batch, "step_s": medians[name],
                         "tokens_per_s": rates[name], "ratio_vs_transformer": rates[name] / rates["transformer"],
                         "flops_per_token": flops[name], "gflops_per_s": flops[name] * rates[name] / 1e9,
                         "flop_bound_vs_transformer": flops["transformer"] / flops[name]})
    deviation = max(abs(n - params["hope"]) / params["hope"] for n in params.values())
    return {"configs": configs, "non_embedding_params": params, "max_param_deviation": deviation, "rows": rows,
            **environment(),
            "threads": torch.get_num_threads(), "repeats": repeats, "tokens_per_step": tokens}


def environment() -> dict:
    """Hardware, software, date and commit of this run."""
    return {"hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__, "python": platform.python_version(), "flush_denormal": FLUSH_DENORMAL,
            "date": datetime.date.today().isoformat(), "commit": git_commit() or "unknown"}


def markdown(result: dict, command: str) -> str:
    p = result["non_embedding_params"]
    widths = {n: c["d_model"] for n, c in result["configs"].items()}
    lines = [
        (f"Command: `{command}`. {result['hardware']}, torch {result['torch']}, Python {result['python']}, "
        f"{result['date']}, commit {result['commit']}. Training steps (forward, backward, AdamW) of "
        f"{result['tokens_per_step']} tokens, the three models interleaved in the same run, medians over "
        f"{result['repeats']} steps."),
        "",
        "Non-embedding parameters: " + ", ".join(f"{n} {p[n]:,} (d = {widths[n]})" for n in MODELS)
        + f"; largest deviation from Hope's count {100 * result['max_param_deviation']:.1f} %.",
        "",
        "| seq | batch | Hope tokens/s | Titans tokens/s | Transformer++ tokens/s | Hope / T++ | Titans / T++ |",
        "|---|---|---|---|---|---|---|",
    ]
    arithmetic = [
        "",
        "Arithmetic per training token (forward and backward, MFLOP) and the rate each model achieved "
        "(GFLOP/s); the bound is T++ FLOPs / Hope FLOPs, Hope's speed ratio if it ran at Transformer++'s "
        "arithmetic rate:",
        "",
        "| seq | Hope MFLOP/token | Titans | Transformer++ | Hope GFLOP/s | Titans | Transformer++ | Hope / T++ bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_len: dict[int, dict[str, dict]] = {}
    for r in result["rows"]:
        by_len.setdefault(r["seq_len"], {})[r["model"]] = r
    for seq, r in by_len.items():
        lines.append(f"| {seq} | {r['hope']['batch']} | {r['hope']['tokens_per_s']:,.0f} | "
                     f"{r['titans']['tokens_per_s']:,.0f} | {r['transformer']['tokens_per_s']:,.0f} | "
                     f"{r['hope']['ratio_vs_transformer']:.2f} | {r['titans']['ratio_vs_transformer']:.2f} |")
        arithmetic.append(f"| {seq} | " + " | ".join(f"{r[m]['flops_per_token'] / 1e6:,.1f}" for m in MODELS) + " | "
                          + " | ".join(f"{r[m]['gflops_per_s']:.1f}" for m in MODELS)
                          + f" | {r['hope']['flop_bound_vs_transformer']:.2f} |")
    return "\n".join(lines + arithmetic)


def step_benchmark_parser(description: str, lengths: str) -> argparse.ArgumentParser:
    """The options of the training-step benchmarks (this script and ``keep_state.py``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lengths", default=lengths, help="comma-separated sequence lengths")
    p.add_argument("--tokens", type=int, default=4096, help="tokens per training step (batch = tokens / seq)")
    p.add_argument("--quick", action="store_true", help="tiny models, short lengths, one repeat (a smoke test)")
    p.add_argument("--out", help="write the result as JSON to this file")
    p.add_argument("--write-docs", action="store_true", help=f"write the table into {DOCS.relative_to(ROOT)}")
    return p


def step_settings(args: argparse.Namespace) -> tuple[list[int], int, int]:
    """Sets the torch threads and flush-to-zero (:func:`timing.cpu_settings`); returns (lengths, tokens per step, repeats), tiny ones under ``--quick``."""
    cpu_settings(args.threads)
    if args.quick:
        return [16, 32], 32, 1
    return [int(s) for s in args.lengths.split(",")], args.tokens, args.repeats


def report(result: dict, text: str, args: argparse.Namespace, key: str, heading: str) -> None:
    """Print the markdown, and write the JSON (``--out``) and the docs section (``--write-docs``)."""
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    if args.write_docs:
        write_block(DOCS, key, text, heading=heading)


def main(argv: list[str] | None = None) -> dict:
    p = step_benchmark_parser(__doc__.splitlines()[0], "256,1024,4096")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the Hope config, e.g. selfmod.heads=4 (repeatable); the baselines "
                        "are width-matched to the result")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.write_docs and args.set:
        raise ConfigError("--write-docs", "the docs table is hope-small's; run overrides (--set) without it")
    result = run(*step_settings(args), quick=args.quick, overrides=args.set)
    text = markdown(result, " ".join(["python benchmarks/hope_throughput.py", *argv]))
    report(result, text, args, KEY, "Hope, Titans and Transformer++ training throughput at equal parameters (issue 4)")
    return result


if __name__ == "__main__":
    main()
