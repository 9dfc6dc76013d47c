"""Training throughput of the Titans neural-memory layer vs Transformer++ attention, and its scaling in length.

Times forward + backward (sum-of-squares loss, gradients for every parameter) in the same run of:
  * the Titans memory layer at the ``titans`` family's defaults (``MemoryLayer``: 2-layer residual MLP
    memory per head, L2 objective, GD with momentum and decay, chunk C = 64; [T §3–4.4]) and the LMM
    block (memory + SwiGLU);
  * Transformer++'s causal attention layer and its whole block (attention + SwiGLU);
then sweeps the sequence length (tokens per step held near constant) to show that the memory's cost
per token stays flat while attention's grows. Each time is the median over ``--repeats`` steps.

Usage:
    python benchmarks/memory_layer.py [--threads 0] [--repeats 5] [--lengths 256,1024,4096,8192] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
from torch import nn

from nestlearn.layers.attention import CausalSelfAttention
from nestlearn.layers.titans import MemoryLayer
from nestlearn.models.titans import MemoryBlock, TitansConfig
from nestlearn.models.transformer import TransformerBlock, TransformerConfig
from timing import cpu_settings, median_time, training_outputs

WIDTH, HEADS, CHUNK, BATCH, SEQ = 256, 4, 64, 4, 1024


def titans_layer() -> MemoryLayer:
    """The memory layer of the ``titans`` family at its defaults (MLP memory, L2, momentum, decay)."""
    return TitansConfig(d_model=WIDTH, n_heads=HEADS, chunk_size=CHUNK).memory_layer()


def models() -> dict[str, nn.Module]:
    return {
        "titans memory layer": titans_layer(),
        "transformer++ attention layer": CausalSelfAttention(WIDTH, HEADS),
        "titans LMM block": MemoryBlock(TitansConfig(d_model=WIDTH, n_heads=HEADS, chunk_size=CHUNK)),
        "transformer++ block": TransformerBlock(TransformerConfig(d_model=WIDTH, n_heads=HEADS)),
    }


def tokens_per_second(module: nn.Module, batch: int, seq: int, repeats: int) -> float:
    """Median forward+backward tokens/s on random inputs (one warm-up step)."""
    x = torch.randn(batch, seq, WIDTH)

    def step():
        module.zero_grad(set_to_none=True)
        y, _ = module(x)
        loss = y.square().mean()
        loss.backward()
        return y.detach(), training_outputs(loss, module)

    return batch * seq / median_time(step, repeats, warmup=1, name=type(module).__name__)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--lengths", default="256,512,1024,2048,4096,8192", help="comma-separated sweep lengths")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()
    cpu_settings(args.threads)
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
