"""Training throughput and model FLOP utilisation (MFU) of Transformer++.

First measures this machine's float32 matrix-multiply rate (the best median over a few square sizes),
then times full training steps (forward, backward, AdamW) of Transformer++ at two sizes and reports
tokens/s and MFU = model FLOP/s / matmul FLOP/s, all in the same run.

Model FLOPs per trained token (fwd + bwd = 3 x fwd):
    6 · N_matmul + 6 · n_layers · seq_len · d_model
where N_matmul counts every weight used in a matrix multiply (blocks and the output head) and the
second term is causal attention (QKᵀ and AV, half of the full 12·L·T·d because of the causal mask).

Usage:
    python benchmarks/throughput.py [--repeats 5] [--threads 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

from nestlearn.models import CausalLM, TransformerConfig
from timing import cpu_settings, median_time, training_outputs

SIZES = [
    {"name": "d256-L4", "d_model": 256, "n_layers": 4, "n_heads": 4, "seq_len": 512, "batch": 8},
    {"name": "d512-L8", "d_model": 512, "n_layers": 8, "n_heads": 8, "seq_len": 512, "batch": 4},
]


def matmul_rate(repeats: int) -> tuple[float, int]:
    """Best median float32 GEMM rate in FLOP/s over square sizes, and the size that gave it."""
    best = (0.0, 0)
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        t = median_time(lambda: torch.mm(a, b), repeats)
        best = max(best, (2 * n ** 3 / t, n))
    return best


def model_flops_per_token(model: CausalLM, seq_len: int) -> float:
    cfg = model.config
    n_matmul = sum(p.numel() for name, p in model.named_parameters() if p.ndim == 2 and not name.startswith("embed"))
    n_matmul += cfg.d_model * cfg.vocab_size  # the (tied) output head
    return 6 * n_matmul + 6 * cfg.n_layers * seq_len * cfg.d_model


def train_rate(size: dict, repeats: int) -> dict:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=256, d_model=size["d_model"], n_layers=size["n_layers"],
                            n_heads=size["n_heads"], max_seq_len=size["seq_len"])
    model = CausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (size["batch"], size["seq_len"] + 1))

    def step():
        loss = model(x[:, :-1], targets=x[:, 1:], keep_state=False).loss
        loss.backward()
        out = training_outputs(loss, model)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out

    t = median_time(step, repeats)
    tokens = size["batch"] * size["seq_len"]
    return {**size, "parameters": model.num_parameters(non_embedding=False), "step_s": t,
            "tokens_per_s": tokens / t, "flops_per_token": model_flops_per_token(model, size["seq_len"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    cpu_settings(args.threads)
    peak, n = matmul_rate(args.repeats)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"float32 matmul rate: {peak / 1e9:.1f} GFLOP/s (best median, {n}x{n})")
    print("| model | params | batch x seq | step (s) | tokens/s | model GFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for size in SIZES:
        r = train_rate(size, args.repeats)
        achieved = r["tokens_per_s"] * r["flops_per_token"]
        r.update(model_flops_per_s=achieved, mfu=achieved / peak)
        rows.append(r)
        print(f"| {r['name']} | {r['parameters'] / 1e6:.2f} M | {r['batch']} x {r['seq_len']} | {r['step_s']:.3f} | "
              f"{r['tokens_per_s']:,.0f} | {achieved / 1e9:.1f} | {100 * r['mfu']:.0f}% |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"matmul_flops_per_s": peak, "threads": torch.get_num_threads(), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
