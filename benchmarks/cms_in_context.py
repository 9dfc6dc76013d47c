"""How far each CMS level moves inside one sequence (docs/design.md S7).

Builds a Hope model from a config (hope-tiny by default; optionally loads trained weights from a
run's checkpoint), captures the input of layer 0's CMS on ``--batch`` sequences of ``--tokens`` KJV
validation bytes, runs the CMS over them from a fresh state, and reports per level: the mean
per-token step η_t, and the relative change of the level's output F(x) − x between its initial and
its final weights on the same inputs, ‖F_T(x) − F_0(x)‖ / ‖F_0(x) − x‖.

Usage:
    python benchmarks/cms_in_context.py [--config configs/hope-tiny.yaml] [--set model.cms.chunk_sizes=[512,128,32]]
                                        [--checkpoint runs/hope-tiny/checkpoint.safetensors]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from timing import cpu_settings

from nestlearn.data.kjv import kjv_splits
from nestlearn.layers.cms import CMS
from nestlearn.memory import memory_apply
from nestlearn.models.lm import CausalLM
from nestlearn.train.config import load_run_config

ROOT = Path(__file__).resolve().parents[1]


def level_motion(model: CausalLM, ids: torch.Tensor) -> list[dict]:
    """Per writing level of layer 0's CMS: chunk size, mean η_t and relative output change over ``ids`` (B, T)."""
    cms = next(m for m in model.blocks[0].modules() if isinstance(m, CMS))
    captured = {}
    hook = cms.register_forward_hook(lambda mod, inp, out: captured.__setitem__("x", inp[0].detach()))
    with torch.no_grad():
        model(ids)
        hook.remove()
        x = captured["x"]
        start = cms.init_state(x.shape[0], x.device, x.dtype)
        _, end = cms(x, start, 0)
        rows = []
        for i, level in enumerate(cms.levels):
            if level.static:
                continue
            z, names = level.norm(x), level.spec.weight_names
            before = memory_apply(level.spec, {n: start[f"{i}.{n}"] for n in names}, z)
            after = memory_apply(level.spec, {n: end[f"{i}.{n}"] for n in names}, z)
            rows.append({"level": i, "chunk_size": level.chunk_size, "eta": float(level.eta_of(x).mean()),
                         "output_change": float((after - before).norm() / before.norm())})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "hope-tiny.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--checkpoint", type=Path, help="a trained run's checkpoint.safetensors")
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args(argv)
    cpu_settings()
    cfg = load_run_config(args.config, [f"model.max_seq_len={args.tokens}", *args.set])
    cfg.model.vocab_size = 256
    torch.manual_seed(0)
    model = CausalLM(cfg.model).eval()
    if args.checkpoint:
        from safetensors.torch import load_file

        tensors = load_file(str(args.checkpoint))
        model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
    data = kjv_splits()["validation"][:args.tokens * args.batch]
    ids = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).astype(np.int64)).view(args.batch, args.tokens)
    for r in level_motion(model, ids):
        print(f"level {r['level']} (C = {r['chunk_size']}): mean η_t {r['eta']:.2e}, output change over "
              f"{args.tokens} tokens {100 * r['output_change']:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
