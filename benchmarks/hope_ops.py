"""Where Hope's training step goes: aten operations per part of a block, and torch.compile against eager.

At the LM section's size (d = 64) and at Hope-small's, Hope's step is bound by per-operation overhead
rather than arithmetic (docs/performance.md), so the number of operations dispatched is the quantity
that speed work on the chunk step (issue 16, item 4) has to lower. It is deterministic and does not
depend on the machine's load, unlike a time. This counts, for one block and one batch, the
operations of the forward pass and of forward + backward, split into the self-modifying layer's
generating memories (``write_group``), its output memory (``main_memory``), the rest of that layer,
and the CMS chain, with the number of chunk calls of each memory.

``--compile chunks`` (or ``model``) also times a whole training step (forward, backward, AdamW) eager
and with the memories' chunk steps under ``torch.compile`` (:func:`nestlearn.memory.compile_chunk_step`;
or the whole model compiled), interleaved, medians of ``--repeats``, after the first compiled step
(whose time, mostly compilation, is reported apart). Losses must be finite.

Usage:
    python benchmarks/hope_ops.py [--model lm|small|quick] [--batch 4] [--seq 512] [--compile chunks|model]
        [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import collections
import time

import torch
from hope_throughput import HOPE, HOPE_QUICK
from timing import check_finite, cpu_settings, interleaved_medians
from torch.utils._python_dispatch import TorchDispatchMode

import nestlearn.layers.self_modifying.layer as selfmod_layer
from nestlearn.eval.suite.lm import FULL, hope_model
from nestlearn.memory import compile_chunk_step, ops
from nestlearn.models.lm import CausalLM, model_config_from_dict


class OpCounter(TorchDispatchMode):
    """Counts every aten operation dispatched while active, under the label of the part that runs."""

    def __init__(self):
        super().__init__()
        self.part = "other"
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[self.part] += 1
        return func(*args, **(kwargs or {}))


def labelled(counter: OpCounter, part: str, fn):
    """``fn`` with its operations counted under ``part`` (the backward pass is counted as one whole)."""

    def wrapper(*args, **kwargs):
        outer, counter.part = counter.part, part
        try:
            return fn(*args, **kwargs)
        finally:
            counter.part = outer

    return wrapper


def build(model: str) -> CausalLM:
    cfg = hope_model(FULL) if model == "lm" else {"family": "hope", **(HOPE if model == "small" else HOPE_QUICK),
                                                  "max_seq_len": 4096}
    torch.manual_seed(0)
    return CausalLM(model_config_from_dict({**cfg, "vocab_size": 256}))


def count_block(model: CausalLM, batch: int, seq: int) -> dict[str, int]:
    """Operations of block 0 on a random (batch, seq, d) input: per part (forward), the backward
    pass, and the chunk calls of each memory size."""
    block = model.blocks[0]
    counter = OpCounter()
    chunks: collections.Counter[str] = collections.Counter()
    chunk = ops._chunk

    def counted_chunk(spec, *args, **kwargs):
        chunks[f"memory chunk calls (C = {spec.chunk_size})"] += 1
        return chunk(spec, *args, **kwargs)

    layer = selfmod_layer.SelfModifyingTitans
    patched = {(layer, "write_group"): "generating memories", (layer, "main_memory"): "output memory",
               (type(block.cms), "forward"): "CMS"}
    saved = {key: getattr(*key) for key in patched}
    x = torch.randn(batch, seq, model.config.d_model, requires_grad=True)
    try:
        ops._chunk = counted_chunk
        for (owner, name), part in patched.items():
            setattr(owner, name, labelled(counter, part, saved[(owner, name)]))
        with counter:
            counter.part = "the rest of the block"
            y, _ = block(x, None, 0, keep_state=False)
            counter.part = "backward"
            y.sum().backward()
    finally:
        ops._chunk = chunk
        for key, fn in saved.items():
            setattr(*key, fn)
    check_finite("block gradients", x.grad)
    return {**counter.counts, **chunks}


def time_compile(model: CausalLM, batch: int, seq: int, repeats: int, what: str) -> dict[str, float]:
    """Seconds per training step, eager and compiled (``what``: ``"chunks"``, the memories' chunk step
    alone, or ``"model"``, the whole forward), interleaved; the first compiled step apart."""
    tokens = torch.randint(0, 256, (batch, seq + 1), generator=torch.Generator().manual_seed(0))
    whole = torch.compile(model) if what == "model" else None
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: both variants see the same weights

    def step(compiled: bool) -> float:
        if what == "chunks":
            compile_chunk_step("inductor" if compiled else None)
        fn = whole if compiled and whole is not None else model
        loss = fn(tokens[:, :-1], targets=tokens[:, 1:]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.item()

    t0 = time.perf_counter()
    check_finite("loss", step(True))
    first = time.perf_counter() - t0
    med = interleaved_medians({"eager": lambda: step(False), "compiled": lambda: step(True)}, repeats)
    compile_chunk_step(None)
    return {"first compiled step": first, "eager step": med["eager"], "compiled step": med["compiled"],
            "speed-up": med["eager"] / med["compiled"]}


def main(argv: list[str] | None = None) -> dict[str, int]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("lm", "small", "quick"), default="lm",
                   help="lm: the LM section's Hope (d = 64); small: hope-small, as in hope_throughput.py; "
                        "quick: its tiny stand-in (a smoke run)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--compile", choices=("chunks", "model"), default=None,
                   help="also time training steps eager against torch.compile of the chunk step or the model")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    cpu_settings(args.threads)
    model = build(args.model)
    counts = count_block(model, args.batch, args.seq)
    forward = sum(v for k, v in counts.items() if k != "backward" and "calls" not in k)
    print(f"Hope ({args.model}, d = {model.config.d_model}), block 0, batch {args.batch} x {args.seq}:\n")
    print("| part | aten operations |\n|---|---|")
    for part, n in counts.items():
        print(f"| {part} | {n:,} |")
    print(f"| forward, all parts | {forward:,} |\n| forward + backward | {forward + counts['backward']:,} |")
    if args.compile:
        print(f"\n| torch.compile ({args.compile}), one training step | seconds |\n|---|---|")
        for name, value in time_compile(model, args.batch, args.seq, args.repeats, args.compile).items():
            print(f"| {name} | {value:.3f} |")
    return counts


if __name__ == "__main__":
    main()
