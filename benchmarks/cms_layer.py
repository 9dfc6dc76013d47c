"""Training throughput of one Continuum Memory System layer against one SwiGLU MLP.

Times forward + backward (sum-of-squares loss, gradients for every parameter) of, in the same run
and interleaved (one step of each in turn, medians over ``--repeats`` rounds):
  * CMS with the ``kv`` signal (the default: D16 chunk sizes 512 / 128 / 32, hidden 4d, sequential);
  * CMS with the ``lss`` signal at the layer level (random values u given, as the model's driver
    supplies them; the driver's own cost, the per-chunk loss gradients, is not included);
  * CMS with the ``optimizer`` signal (static levels: three pre-norm residual MLPs);
  * Transformer++'s MLP: x + SwiGLU(RMSNorm(x)) with hidden 8/3·d (``nestlearn.layers.mlp``).
Tokens per step are held near ``--tokens`` (batch = tokens // seq). Ratios are against the MLP.

Usage:
    python benchmarks/cms_layer.py [--threads 0] [--repeats 5] [--lengths 512,1024,4096] [--out cms.json]
    python benchmarks/cms_layer.py --quick      # tiny smoke run
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
from timing import cpu_settings, interleaved_medians, training_outputs
from torch import nn

from nestlearn.layers.cms import CMS, CMSConfig
from nestlearn.layers.mlp import SwiGLU, swiglu_hidden
from nestlearn.layers.norm import RMSNorm


class MLPLayer(nn.Module):
    """x + SwiGLU(RMSNorm(x)), the MLP half of a Transformer++ block."""

    def __init__(self, d_model: int):
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, swiglu_hidden(d_model))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x + self.mlp(self.norm(x)), None


class LSSLayer(nn.Module):
    """A CMS with the ``lss`` signal fed fixed random values u (the layer's share of the signal's cost)."""

    def __init__(self, d_model: int, cfg: CMSConfig):
        super().__init__()
        self.cms = CMS(d_model, cfg)
        self.u: dict[int, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if not self.u or next(iter(self.u.values())).shape != x.shape:
            gen = torch.Generator().manual_seed(0)
            self.u = {i: 1e-3 * torch.randn(x.shape, generator=gen) for i in self.cms.lss_levels}
        return self.cms(x, u=self.u)


def layers(d_model: int, chunk_sizes: tuple[int, ...]) -> dict[str, nn.Module]:
    kw = {"chunk_sizes": chunk_sizes, "hidden_mult": 4}
    return {
        "cms kv": CMS(d_model, CMSConfig(**kw)),
        "cms lss": LSSLayer(d_model, CMSConfig(signal="lss", **kw)),
        "cms optimizer": CMS(d_model, CMSConfig(signal="optimizer", **kw)),
        "swiglu mlp": MLPLayer(d_model),
    }


def step_fn(module: nn.Module, x: torch.Tensor):
    def step():
        module.zero_grad(set_to_none=True)
        y, _ = module(x)
        loss = y.square().mean()
        loss.backward()
        return training_outputs(loss, module)
    return step


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--chunk-sizes", default="512,128,32", help="CMS chunk sizes, slowest first")
    p.add_argument("--lengths", default="512,1024,4096", help="comma-separated sequence lengths")
    p.add_argument("--tokens", type=int, default=8192, help="tokens per step (batch = tokens // seq)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (d 32, chunks 16/8/4, lengths 16,32)")
    p.add_argument("--out", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.d_model, args.chunk_sizes, args.lengths, args.tokens = 32, "16,8,4", "16,32", 64
        args.repeats, args.warmup = 1, 0
    cpu_settings(args.threads)
    chunk_sizes = tuple(int(s) for s in args.chunk_sizes.split(","))
    torch.manual_seed(0)
    mods = layers(args.d_model, chunk_sizes)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"# d {args.d_model}, CMS chunks {chunk_sizes}, hidden 4d; forward+backward tokens/s "
          f"(median of {args.repeats}, interleaved); ratio vs swiglu mlp")
    rows = []
    for seq in (int(s) for s in args.lengths.split(",")):
        batch = max(1, args.tokens // seq)
        x = torch.randn(batch, seq, args.d_model)
        medians = interleaved_medians({name: step_fn(m, x) for name, m in mods.items()}, args.repeats, args.warmup)
        mlp = batch * seq / medians["swiglu mlp"]
        for name, sec in medians.items():
            tps = batch * seq / sec
            rows.append({"layer": name, "seq_len": seq, "batch": batch, "tokens_per_s": tps, "ratio_vs_mlp": tps / mlp})
            print(f"seq {seq:5d} batch {batch:3d}  {name:14s} {tps:10.0f} tok/s  {tps / mlp:6.3f}x")
    result = {"threads": torch.get_num_threads(), "d_model": args.d_model, "chunk_sizes": list(chunk_sizes),
              "repeats": args.repeats, "rows": rows}
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
