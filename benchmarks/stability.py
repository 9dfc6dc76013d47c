"""Long-stream stability of every recurrent family: finite outputs and the largest fast-weight norm.

Each family's tiny config (configs/<family>-tiny.yaml, d = 64) reads a stream of KJV text and of
random bytes in float32, segment by segment with the carried state, at its defaults and with its
gates at the top of their range (step gate at 0.9 of its bound, momentum 0.9; ``--gates top``).
Reported per family: whether every output was finite, the first non-finite memory (layer, memory,
tokens) if not, and the largest fast-weight norm over the stream (design.md S6). ``--train-steps N``
first trains the model N steps on KJV at the config's own optimiser settings (``--train-steps 400``
is the demo's budget).

Usage:
    python benchmarks/stability.py [--tokens 32768] [--families hope,titans] [--gates default,top]
                                   [--train-steps 0] [--set model.selfmod.eta_max=0.5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nestlearn.config import load_yaml
from nestlearn.data.kjv import kjv_splits
from nestlearn.eval.stability import RECURRENT, read_stream, stream, top_gates
from nestlearn.models.lm import CausalLM
from nestlearn.train.config import load_run_config

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
    path = ROOT / "configs" / f"{family}-tiny.yaml"
    raw = load_yaml(path)
    sets = (top_gates(family, raw["model"]) if gates == "top" else []) + overrides
    cfg = load_run_config(path, sets)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--segment", type=int, default=2048)
    p.add_argument("--families", default=",".join(RECURRENT))
    p.add_argument("--gates", default="default,top")
    p.add_argument("--train-steps", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    rows = []
    for family in args.families.split(","):
        for gates in args.gates.split(","):
            r = run_family(family, gates, args.tokens, args.segment, args.train_steps, args.set, args.seed)
            rows.append(r)
            cells = "  ".join(f"{k}: {'finite' if r[k]['finite'] else 'NON-FINITE ' + str(r[k]['first_nonfinite'])}"
                              f" max‖W‖ {r[k]['max_norm']:.3g}" for k in ("kjv", "random"))
            extra = f"  train non-finite {r['nonfinite_train_steps']}" if args.train_steps else ""
            print(f"{family:17s} {gates:7s} {cells}{extra}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0 if all(r[k]["finite"] for r in rows for k in ("kjv", "random")) else 1


if __name__ == "__main__":
    sys.exit(main())
