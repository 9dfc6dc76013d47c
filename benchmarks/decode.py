"""Decode cost per generated token as the context grows: Hope (recurrent state) vs Transformer++ (KV cache).

Both models are built as in ``hope_throughput.py`` (hope-small, and Transformer++ at the width with
the same non-embedding parameter count). Each reads a random byte context once, segment by segment
with its own state API (``CausalLM.init_state`` / ``forward(tokens, state=...)``); when the context
reaches each length in ``--lengths`` (1K … 32K tokens by default), the script times ``--steps``
single-token decode steps from the current state (median) and records

* the state's size in bytes, exact from its tensors (KV cache for Transformer++, every fast memory,
  momentum and CMS level for Hope: sum of numel × element size, as saved), and
* the growth of the process's peak resident memory since the start (``ru_maxrss``; coarse: a peak,
  shared by both models and including the reading of the context).

The state then keeps growing from where it is: the context is read only once. Hope's cost per token
should be flat, Transformer++'s grows with the cache. Both models run in the same process, one
length after the other, with ``torch.inference_mode``.

Usage:
    python benchmarks/decode.py [--threads 0] [--lengths 1024,...,32768] [--steps 8] [--segment 512]
        [--quick] [--out result.json] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from timing import check_finite, cpu_settings
from hope_throughput import (
    ROOT,
    VOCAB,
    build,
    environment,
    equal_param_configs,
)
from markers import write_block

from nestlearn.models import CausalLM
from nestlearn.models.lm import LMState

DOCS = ROOT / "docs" / "performance.md"
PLOT = ROOT / "docs" / "decode.png"
KEY = "decode"  # its block in docs/performance.md
MODELS = ("hope", "transformer")
LENGTHS = "1024,2048,4096,8192,16384,32768"


def state_bytes(state: LMState) -> int:
    """Exact size of a model's fast state: every tensor's numel × element size."""
    return sum(t.numel() * t.element_size() for t in state.flat().values())


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Reader:
    """One model reading a growing context with its carried state."""

    def __init__(self, model: CausalLM, generator: torch.Generator, segment: int):
        self.model, self.generator, self.segment = model, generator, segment
        self.state = model.init_state(1)

    @property
    def length(self) -> int:
        return self.state.pos

    def read_to(self, length: int) -> None:
        """Feed random tokens, ``segment`` at a time, until the context holds ``length`` tokens."""
        while self.state.pos < length:
            n = min(self.segment, length - self.state.pos)
            tokens = torch.randint(0, VOCAB, (1, n), generator=self.generator)
            self.state = self.model(tokens, state=self.state).state

    def decode(self, steps: int) -> float:
        """Median seconds of ``steps`` one-token steps, each continuing the state of the last."""
        times = []
        token = torch.randint(0, VOCAB, (1, 1), generator=self.generator)
        for _ in range(steps):
            t0 = time.perf_counter()
            out = self.model(token, state=self.state)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            times.append(time.perf_counter() - t0)
            check_finite(f"decode at {self.state.pos} tokens", out.logits)
            self.state = out.state
        return statistics.median(times)


def run(lengths: list[int], steps: int, segment: int, quick: bool = False) -> dict:
    max_len = max(lengths) + steps * len(lengths) + 1
    configs = {n: c for n, c in equal_param_configs(quick, max_len).items() if n in MODELS}
    models = {n: build(cfg).eval() for n, cfg in configs.items()}
    readers = {n: Reader(m, torch.Generator().manual_seed(0), segment) for n, m in models.items()}
    rss0 = peak_rss_bytes()
    rows = []
    with torch.inference_mode():
        for length in lengths:
            for name in MODELS:
                reader = readers[name]
                reader.read_to(length)
                context = reader.length
                seconds = reader.decode(steps)
                rows.append({"model": name, "length": length, "context": context, "ms_per_token": 1e3 * seconds,
                             "state_bytes": state_bytes(reader.state), "peak_rss_growth_bytes": peak_rss_bytes() - rss0})
    return {"configs": configs, "non_embedding_params": {n: m.num_parameters(non_embedding=True) for n, m in models.items()},
            "rows": rows, "steps": steps, "segment": segment, "threads": torch.get_num_threads(), **environment()}


def markdown(result: dict, command: str) -> str:
    p = result["non_embedding_params"]
    lines = [
        (f"Command: `{command}`. {result['hardware']}, torch {result['torch']}, Python {result['python']}, "
        f"{result['date']}, commit {result['commit']}. Batch 1; each context read once in segments of "
        f"{result['segment']} tokens, then the median of {result['steps']} one-token decode steps; state = the "
        f"exact size of the carried tensors; peak RSS growth is the process's peak since the start (both models)."),
        "",
        "Non-embedding parameters: " + ", ".join(f"{n} {p[n]:,} (d = {result['configs'][n]['d_model']})" for n in MODELS) + ".",
        "",
        "| context | Hope ms/token | Transformer++ ms/token | Hope state | Transformer++ KV cache | peak RSS growth |",
        "|---|---|---|---|---|---|",
    ]
    by_len: dict[int, dict[str, dict]] = {}
    for r in result["rows"]:
        by_len.setdefault(r["length"], {})[r["model"]] = r
    for r in by_len.values():
        h, t = r["hope"], r["transformer"]
        lines.append(f"| {h['context']:,} | {h['ms_per_token']:.2f} | {t['ms_per_token']:.2f} | "
                     f"{h['state_bytes'] / 2**20:.2f} MiB | {t['state_bytes'] / 2**20:.2f} MiB | "
                     f"{t['peak_rss_growth_bytes'] / 2**20:.0f} MiB |")
    lines += ["", "![decode cost per token and state size vs context](decode.png)"]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """ms/token and state MiB against context, one line per model (log-scaled context)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, label in (("hope", "Hope (recurrent state)"), ("transformer", "Transformer++ (KV cache)")):
        rows = [r for r in result["rows"] if r["model"] == name]
        ctx = [r["context"] for r in rows]
        ax_t.plot(ctx, [r["ms_per_token"] for r in rows], marker="o", label=label)
        ax_m.plot(ctx, [r["state_bytes"] / 2**20 for r in rows], marker="o", label=label)
    for ax, ylabel in ((ax_t, "ms per generated token"), (ax_m, "state / KV cache (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_t.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--lengths", default=LENGTHS, help="comma-separated context lengths")
    p.add_argument("--steps", type=int, default=8, help="timed decode steps per length")
    p.add_argument("--segment", type=int, default=512, help="tokens per forward call while reading the context")
    p.add_argument("--quick", action="store_true", help="tiny models and contexts (a smoke test)")
    p.add_argument("--out", help="write the result as JSON to this file")
    p.add_argument("--write-docs", action="store_true",
                   help=f"write the table into {DOCS.relative_to(ROOT)} and the plot to {PLOT.relative_to(ROOT)}")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    cpu_settings(args.threads)
    lengths = [int(s) for s in args.lengths.split(",")]
    steps, segment = args.steps, args.segment
    if args.quick:
        lengths, steps, segment = [16, 32, 64], 2, 16
    result = run(lengths, steps, segment, quick=args.quick)
    text = markdown(result, " ".join(["python benchmarks/decode.py", *argv]))
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    if args.write_docs:
        plot(result, PLOT)
        write_block(DOCS, KEY, text, heading="Decoding with a growing context: Hope vs Transformer++ (issue 4)")
    return result


if __name__ == "__main__":
    main()
