"""Training throughput of the Titans neural-memory layer vs Transformer++ attention, and its scaling in length.

Times forward + backward (sum-of-squares loss, gradients for every parameter) in the same run of:
  * the Titans memory layer at the ``titans`` family's defaults (``MemoryLayer``: 2-layer residual MLP
    memory per head, L2 objective, GD with momentum and decay, chunk C = 64; [T §3–4.4]) and the LMM
    block (memory + SwiGLU);
  * Transformer++'s causal attention layer and its whole block (attention + SwiGLU);
then sweeps the sequence length (tokens per step held near constant) to show that the memory's cost
per token stays flat while attention's grows. Each time is the median over ``--repeats`` steps.

``--peer`` instead times titans-pytorch's ``NeuralMemory`` configured to the same work
(peer_titans.py) beside the nestlearn memory layer at 4 × 1024 and 1 × 4096 tokens, the two steps
timed in turns, every output and gradient checked finite, and prints the ratios; ``--write-docs``
writes them with the remaining differences into docs/performance.md.

Usage:
    python benchmarks/memory_layer.py [--threads 0] [--repeats 5] [--lengths 256,1024,4096,8192] [--json out.json]
    python benchmarks/memory_layer.py --peer [--threads 1] [--repeats 7] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

from nestlearn.layers.attention import CausalSelfAttention
from nestlearn.layers.titans import MemoryLayer
from nestlearn.models.titans import MemoryBlock, TitansConfig
from nestlearn.models.transformer import TransformerBlock, TransformerConfig
from markers import write_block
from peer_titans import DIFFERENCES, PeerUnavailable, peer_layer
from timing import cpu_settings, interleaved_medians, median_time, training_outputs

WIDTH, HEADS, CHUNK, BATCH, SEQ = 256, 4, 64, 4, 1024
PEER_SHAPES = ((4, 1024), (1, 4096))
DOCS = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def titans_layer(**switches) -> MemoryLayer:
    """The memory layer of the ``titans`` family at its defaults (MLP memory, L2, momentum, decay)."""
    return TitansConfig(d_model=WIDTH, n_heads=HEADS, chunk_size=CHUNK, **switches).memory_layer()


def models() -> dict[str, nn.Module]:
    return {
        "titans memory layer": titans_layer(),
        "transformer++ attention layer": CausalSelfAttention(WIDTH, HEADS),
        "titans LMM block": MemoryBlock(TitansConfig(d_model=WIDTH, n_heads=HEADS, chunk_size=CHUNK)),
        "transformer++ block": TransformerBlock(TransformerConfig(d_model=WIDTH, n_heads=HEADS)),
    }


def train_step(module: nn.Module, x: torch.Tensor):
    """One forward + backward (sum-of-squares loss) of a layer returning ``(y, state)``; its outputs,
    loss and gradients, for the finiteness check."""
    module.zero_grad(set_to_none=True)
    y, _ = module(x)
    loss = y.square().mean()
    loss.backward()
    return y.detach(), training_outputs(loss, module)


def tokens_per_second(module: nn.Module, batch: int, seq: int, repeats: int) -> float:
    """Median forward+backward tokens/s on random inputs (one warm-up step)."""
    x = torch.randn(batch, seq, WIDTH)
    return batch * seq / median_time(lambda: train_step(module, x), repeats, warmup=1, name=type(module).__name__)


def peer_rows(repeats: int) -> list[dict[str, float]]:
    """nestlearn's Titans memory layer (at its defaults, and reading the chunk-boundary weights as the
    peer does) and the peer, timed in turns at each of :data:`PEER_SHAPES`."""
    torch.manual_seed(0)
    layers = {"nestlearn": titans_layer(), "boundary": titans_layer(read="boundary"),
              "peer": peer_layer(WIDTH, HEADS, CHUNK)}
    rows = []
    for batch, seq in PEER_SHAPES:
        x = torch.randn(batch, seq, WIDTH)
        t = interleaved_medians({name: (lambda m=m: train_step(m, x)) for name, m in layers.items()}, repeats)
        rows.append({"batch": batch, "seq": seq, **{name: batch * seq / t[name] for name in layers},
                     "ratio": t["peer"] / t["nestlearn"], "ratio_boundary": t["peer"] / t["boundary"]})
    return rows


def peer_markdown(rows: list[dict[str, float]], repeats: int, peer_version: str) -> str:
    """The docs/performance.md block of a ``--peer`` run."""
    lines = [f"Command: `python benchmarks/memory_layer.py --peer --threads {torch.get_num_threads()} --repeats {repeats} "
             f"--write-docs`. torch {torch.__version__}, titans-pytorch {peer_version}, "
             f"{torch.get_num_threads()} thread(s), flush-to-zero on; forward + backward with gradients for every "
             "parameter, the two layers timed in turns, medians; every output, loss and gradient checked finite.", "",
             "| batch × seq | titans-pytorch tokens/s | nestlearn (defaults) tokens/s | ratio | nestlearn "
             "(`read=boundary`) tokens/s | ratio |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} × {r['seq']} | {r['peer']:,.0f} | {r['nestlearn']:,.0f} | {r['ratio']:.2f}× | "
              f"{r['boundary']:,.0f} | {r['ratio_boundary']:.2f}× |" for r in rows]
    lines += ["", "Same work: width 256, 4 heads, chunk 64, a 2-layer residual MLP memory of width 64 per head, L2 "
              "objective, momentum and decay, gradients through every write. `read=boundary` reads the weights of "
              "the chunk boundary inside each chunk, as the peer does (the read options: decisions.md D5). "
              "What differs:", ""]
    lines += [f"- {d}" for d in DIFFERENCES]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--lengths", default="256,512,1024,2048,4096,8192", help="comma-separated sweep lengths")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--peer", action="store_true", help="time titans-pytorch's NeuralMemory beside the memory layer")
    p.add_argument("--write-docs", action="store_true", help="with --peer: write the result into docs/performance.md")
    args = p.parse_args()
    cpu_settings(args.threads)
    if args.peer:
        try:
            rows = peer_rows(args.repeats)
        except PeerUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        text = peer_markdown(rows, args.repeats, version("titans-pytorch"))
        print(text)
        if args.write_docs:
            write_block(DOCS, "peer", text, heading="Titans memory layer vs titans-pytorch (issue 16)")
        return
    torch.manual_seed(0)
    mods = models()
    mem_state = sum(t[0].numel() for t in mods["titans memory layer"].init_state(1, "cpu", torch.float32).values())
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"# width {WIDTH}, {HEADS} heads, chunk {CHUNK}; fast state per sample and layer: {mem_state} floats")
    print(f"\n## batch {BATCH} x seq {SEQ}, forward+backward tokens/s (median of {args.repeats})")
    main_rows = {name: tokens_per_second(m, BATCH, SEQ, args.repeats) for name, m in mods.items()}
    for name, tps in main_rows.items():
        print(f"{name:32s} {tps:10.0f}")
    layer_ratio = main_rows["titans memory layer"] / main_rows["transformer++ attention layer"]
    block_ratio = main_rows["titans LMM block"] / main_rows["transformer++ block"]
    print(f"ratio memory layer / attention layer: {layer_ratio:.2f}; LMM block / Transformer++ block: {block_ratio:.2f}")

    lengths = [int(s) for s in args.lengths.split(",")]
    print(f"\n## sweep: tokens per step = max(seq, {BATCH * SEQ}), tokens/s (median of {args.repeats})")
    print(f"{'seq':>6s} {'batch':>5s} {'memory layer':>13s} {'attention':>10s}")
    sweep = []
    for seq in lengths:
        batch = max(1, BATCH * SEQ // seq)
        mem = tokens_per_second(mods["titans memory layer"], batch, seq, args.repeats)
        att = tokens_per_second(mods["transformer++ attention layer"], batch, seq, args.repeats)
        sweep.append({"seq": seq, "batch": batch, "memory_layer": mem, "attention_layer": att})
        print(f"{seq:6d} {batch:5d} {mem:13.0f} {att:10.0f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"threads": torch.get_num_threads(), "main": main_rows, "layer_ratio": layer_ratio,
                       "block_ratio": block_ratio, "sweep": sweep, "state_floats_per_sample": mem_state}, f, indent=2)


if __name__ == "__main__":
    main()
