"""The training loop: one readable function from config to report.

AdamW (or any ``nestlearn.optim`` optimizer) with linear warm-up and cosine decay, gradient
accumulation and clipping, optional bf16 autocast, periodic validation in bits per byte, a progress
bar, metrics as JSON lines, atomic checkpoints that resume bit-exactly, and a report per run.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import nestlearn
from nestlearn.data.corpus import load_corpus
from nestlearn.data.tokenizer import BPETokenizer, ByteTokenizer, tokenizer_from_description
from nestlearn.errors import CheckpointError, ConfigError, DataError, NestlearnError
from nestlearn.eval.lm import evaluate_bpb
from nestlearn.models.lm import CausalLM, model_config_from_dict, replace_config
from nestlearn.optim.config import build_optimizer
from nestlearn.provenance import provenance
from nestlearn.switches import resolved_switches
from nestlearn.train.checkpoint import (decode_bytes, encode_bytes, flatten, load_checkpoint, save_checkpoint,
                                        unflatten)
from nestlearn.train.config import OPERATIONAL_FIELDS, RunConfig, config_diff
from nestlearn.train.report import plot_metrics, write_report

CHECKPOINT = "checkpoint.safetensors"


class TrainingDiverged(NestlearnError):
    """The training loss became NaN or infinite."""
METRICS = "metrics.jsonl"


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier for optimizer step ``step`` (0-based): linear warm-up, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", "is 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(name)


def sample_batch(ids: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of ``seq_len + 1`` tokens (they may cross document boundaries).

    Returns:
        inputs, targets: each (batch_size, seq_len), targets shifted by one.
    """
    starts = torch.randint(0, len(ids) - seq_len, (batch_size,), generator=generator)
    window = ids[starts[:, None] + torch.arange(seq_len + 1)[None, :]].long()
    return window[:, :-1], window[:, 1:]


def build_tokenizer(cfg: RunConfig, train_text: bytes):
    if cfg.data.tokenizer == "byte":
        return ByteTokenizer()
    return BPETokenizer.train(train_text, cfg.data.bpe_vocab_size)


def model_state_tensors(model: CausalLM) -> dict[str, torch.Tensor]:
    return {f"model/{k}": v for k, v in model.state_dict().items()}


def load_model_weights(model: CausalLM, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Copy ``model/*`` tensors into ``model``; a missing, extra or reshaped tensor is an error."""
    weights = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    reshaped = [k for k in own if k in weights and own[k].shape != weights[k].shape]
    if missing or extra or reshaped:
        parts = [f"missing {missing[:5]}" if missing else "", f"unexpected {extra[:5]}" if extra else "",
                 "shape mismatch " + ", ".join(f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in reshaped[:5]) if reshaped else ""]
        raise CheckpointError(f"{path} does not match the model: " + "; ".join(p for p in parts if p))
    model.load_state_dict(weights)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[CausalLM, Any, dict]:
    """Load a trained model, its tokenizer and its metadata from a checkpoint file or run folder."""
    path = Path(path)
    tensors, meta = load_checkpoint(path)
    try:
        model_cfg = model_config_from_dict(meta["config"]["model"])
    except KeyError:
        raise CheckpointError(f"{path}: metadata has no model config") from None
    model = CausalLM(model_cfg)
    load_model_weights(model, tensors, path)
    tokenizer = tokenizer_from_description(meta["tokenizer"], meta.get("tokenizer_json"))
    return model.to(device).eval(), tokenizer, meta


class Trainer:
    """Trains one run described by a :class:`RunConfig`.

    Args:
        cfg: the run configuration.
        resume: a run folder or checkpoint to continue from (None: a fresh run).
        allow_config_change: resume even if non-operational config fields differ (recorded in metadata).
        progress: show a progress bar.
    """

    def __init__(self, cfg: RunConfig, resume: str | Path | None = None, allow_config_change: bool = False,
                 progress: bool = True):
        self.cfg = cfg
        self.progress = progress
        self.out = Path(cfg.train.out_dir)
        tc = cfg.train
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.device = resolve_device(tc.device)

        ckpt_tensors, ckpt_meta = (None, None)
        if resume is not None:
            ckpt_tensors, ckpt_meta = load_checkpoint(resume)
            self._check_resume_config(ckpt_meta, allow_config_change, Path(resume))
        elif (self.out / CHECKPOINT).exists():
            raise ConfigError("train.out_dir", f"{self.out} already holds a checkpoint; continue it with "
                              f"--resume {self.out}, or choose another train.out_dir")

        self.corpus = load_corpus(cfg.data)
        if ckpt_meta is not None:
            self.tokenizer = tokenizer_from_description(ckpt_meta["tokenizer"], ckpt_meta.get("tokenizer_json"))
        else:
            self.tokenizer = build_tokenizer(cfg, self.corpus.train)
        self.train_ids = torch.from_numpy(self.tokenizer.encode(self.corpus.train).astype(np.int32))
        self.val_ids = torch.from_numpy(self.tokenizer.encode(self.corpus.validation))
        self.token_bytes = torch.from_numpy(self.tokenizer.token_bytes)
        if len(self.train_ids) <= tc.seq_len + 1:
            raise DataError(f"the train split has {len(self.train_ids)} tokens; train.seq_len={tc.seq_len} "
                            "needs more than seq_len + 1 (use a larger corpus or a smaller train.seq_len)")

        mcfg = cfg.model
        if mcfg.vocab_size is None:
            mcfg = replace_config(mcfg, vocab_size=self.tokenizer.vocab_size)
        elif mcfg.vocab_size != self.tokenizer.vocab_size:
            raise ConfigError("model.vocab_size", f"is {mcfg.vocab_size} but the {self.tokenizer.kind} tokenizer has "
                              f"{self.tokenizer.vocab_size} ids; leave it unset to take the tokenizer's")
        if mcfg.bounded_context and tc.seq_len > mcfg.max_seq_len:
            raise ConfigError("train.seq_len", f"is {tc.seq_len} but must be <= model.max_seq_len={mcfg.max_seq_len}")
        self.cfg.model = mcfg

        torch.manual_seed(tc.seed)
        self.model = CausalLM(mcfg).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.data_gen = torch.Generator().manual_seed(tc.seed)
        self.step = 0
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.last_eval: dict[str, float] = {}
        self.overrides: list[dict] = []
        self.provenance = provenance()
        if ckpt_meta is not None:
            self._restore(ckpt_tensors, ckpt_meta, Path(resume))

    # -- checkpoints ---------------------------------------------------------------------------------
    def _check_resume_config(self, meta: dict, allow: bool, path: Path) -> None:
        saved = meta.get("config")
        if saved is None:
            raise CheckpointError(f"{path}: metadata has no config")
        mine = self.cfg.to_dict()
        if mine["model"].get("vocab_size") is None:
            mine["model"]["vocab_size"] = saved["model"].get("vocab_size")
        diffs = [d for d in config_diff(saved, mine) if d[0] not in OPERATIONAL_FIELDS]
        if diffs and not allow:
            listing = "; ".join(f"{name}: checkpoint {a!r}, requested {b!r}" for name, a, b in diffs)
            raise CheckpointError(f"{path} was trained with a different config ({listing}); pass "
                                  "--allow-config-change to resume anyway")
        self._resume_diffs = diffs

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict, path: Path) -> None:
        load_model_weights(self.model, tensors, path)
        opt_state = unflatten(meta["optimizer"], tensors)
        try:
            self.optimizer.load_state_dict(opt_state)
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{path}: optimizer state does not match optim.name={self.cfg.optim.name!r}: {err}") from None
        self.step = meta["step"]
        self.tokens_seen = meta["tokens_seen"]
        self.elapsed = meta["elapsed_s"]
        self.last_eval = meta.get("last_eval", {})
        self.overrides = meta.get("config_overrides", [])
        if self._resume_diffs:
            self.overrides.append({"step": self.step, "changes": [list(d) for d in self._resume_diffs]})
        self.data_gen.set_state(decode_bytes(meta["rng"]["data"]))
        torch.set_rng_state(decode_bytes(meta["rng"]["torch"]))
        if "cuda" in meta["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state(decode_bytes(meta["rng"]["cuda"]))
        if self.cfg.train.steps < self.step:
            raise ConfigError("train.steps", f"is {self.cfg.train.steps} but the checkpoint is already at step {self.step}")
        _truncate_metrics(self.out / METRICS, self.step)

    def metadata(self) -> dict:
        rng = {"torch": encode_bytes(torch.get_rng_state()), "data": encode_bytes(self.data_gen.get_state())}
        if torch.cuda.is_available():
            rng["cuda"] = encode_bytes(torch.cuda.get_rng_state())
        tok_json = self.tokenizer.to_json() if isinstance(self.tokenizer, BPETokenizer) else None
        return {"format": 1, "nestlearn_version": nestlearn.__version__, "config": self.cfg.to_dict(),
                "step": self.step, "tokens_seen": self.tokens_seen, "elapsed_s": self.elapsed, "rng": rng,
                "data": self.corpus.describe(), "tokenizer": self.tokenizer.describe(), "tokenizer_json": tok_json,
                "last_eval": self.last_eval, "config_overrides": self.overrides,
                "parameters": self.model.num_parameters(non_embedding=False),
                "switches": resolved_switches(self.cfg.to_dict()), "provenance": self.provenance}

    def save(self) -> Path:
        tensors = model_state_tensors(self.model)
        meta = self.metadata()
        meta["optimizer"] = flatten(self.optimizer.state_dict(), "optim", tensors)
        return save_checkpoint(self.out / CHECKPOINT, tensors, meta)

    # -- the loop ------------------------------------------------------------------------------------
    def _autocast(self):
        if self.cfg.train.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def evaluate(self, full: bool = False) -> dict[str, float]:
        tc = self.cfg.train
        return evaluate_bpb(self.model, self.val_ids, self.token_bytes, tc.seq_len, tc.batch_size,
                            0 if full else tc.eval_tokens, tc.bf16)

    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns its metrics."""
        tc = self.cfg.train
        factor = lr_factor(self.step, tc.steps, tc.warmup_steps, tc.min_lr_ratio)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        nats, n_bytes = 0.0, 0
        for _ in range(tc.grad_accum):
            x, y = sample_batch(self.train_ids, tc.batch_size, tc.seq_len, self.data_gen)
            x, y = x.to(self.device), y.to(self.device)
            with self._autocast():
                loss = self.model(x, targets=y).loss
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"training diverged at step {self.step + 1}: the loss is {loss.item()}; lower optim.lr "
                    f"(now {self.cfg.optim.lr}) or raise train.warmup_steps; the last checkpoint is kept")
            (loss / tc.grad_accum).backward()
            nats += loss.item() * y.numel()
            n_bytes += int(self.token_bytes[y].sum())
        grad_norm = 0.0
        if tc.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        n_tokens = tc.grad_accum * tc.batch_size * tc.seq_len
        self.tokens_seen += n_tokens
        return {"loss": nats / n_tokens, "bpb": nats / (math.log(2) * max(n_bytes, 1)),
                "lr": self.base_lrs[0] * factor, "grad_norm": grad_norm}

    def run(self) -> dict[str, Any]:
        """Train until ``train.steps`` (or ``train.stop_at``); returns the final metrics."""
        tc = self.cfg.train
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(_yaml_dump(self.cfg.to_dict()), encoding="utf-8")
        if isinstance(self.tokenizer, BPETokenizer):
            self.tokenizer.save(self.out)
        stop = tc.stop_at or tc.steps
        bar = tqdm(total=tc.steps, initial=self.step, desc="train", unit="step", disable=not self.progress,
                   dynamic_ncols=True)
        metrics_file = open(self.out / METRICS, "a", encoding="utf-8")
        window_start, window_tokens = time.perf_counter(), 0
        if self.step == 0:
            # The untrained model's score anchors the curve (about 8 bits per byte for bytes).
            self.last_eval = self.evaluate()
            _write(metrics_file, {"step": 0, "val_bpb": self.last_eval["bpb"], "val_loss": self.last_eval["loss"],
                                  "val_tokens": self.last_eval["tokens"]})
        try:
            while self.step < stop:
                t0 = time.perf_counter()
                m = self.train_step()
                self.elapsed += time.perf_counter() - t0
                window_tokens += tc.grad_accum * tc.batch_size * tc.seq_len
                bar.update(1)
                if self.step % tc.log_every == 0 or self.step == stop:
                    tok_s = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                    window_start, window_tokens = time.perf_counter(), 0
                    _write(metrics_file, {"step": self.step, **m, "tokens": self.tokens_seen, "tok_per_s": tok_s,
                                          "elapsed_s": self.elapsed})
                    bar.set_postfix(loss=f"{m['loss']:.3f}", bpb=f"{m['bpb']:.3f}", tok_s=f"{tok_s:.0f}")
                final = self.step == tc.steps
                if self.step % tc.eval_every == 0 or final:
                    self.last_eval = self.evaluate(full=final)
                    _write(metrics_file, {"step": self.step, "val_bpb": self.last_eval["bpb"],
                                          "val_loss": self.last_eval["loss"], "val_tokens": self.last_eval["tokens"]})
                    bar.set_postfix(loss=f"{m['loss']:.3f}", val_bpb=f"{self.last_eval['bpb']:.3f}")
                if self.step % tc.ckpt_every == 0 or self.step == stop:
                    metrics_file.flush()
                    self.save()
        except KeyboardInterrupt:
            metrics_file.flush()
            self.save()
            raise
        finally:
            bar.close()
            metrics_file.close()
        result = {"step": self.step, "steps": tc.steps, "tokens_seen": self.tokens_seen, "elapsed_s": self.elapsed,
                  "val": self.last_eval, "parameters": self.model.num_parameters(non_embedding=False)}
        if self.step == tc.steps:
            result["sample"] = self.sample()
            plot_metrics(self.out / METRICS, self.out / "loss.png")
            write_report(self.out, self.metadata(), result)
        return result

    def sample(self) -> str:
        """A sample continuing the first line of the validation split, seeded by ``train.seed``."""
        n = self.cfg.train.sample_tokens
        prompt_text = self.corpus.validation.split(b"\n", 1)[0][:80] or self.corpus.validation[:80]
        prompt = torch.from_numpy(self.tokenizer.encode(prompt_text))[None].to(self.device)
        if self.cfg.model.bounded_context:
            prompt = prompt[:, : max(1, self.cfg.model.max_seq_len // 2)]
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.train.seed)
        was_training = self.model.training
        self.model.eval()
        ids, _ = self.model.generate(prompt, n, temperature=0.8, top_k=40, generator=gen)
        self.model.train(was_training)
        return self.tokenizer.decode(ids[0].tolist())


def _write(fh, record: dict) -> None:
    fh.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after ``step`` (by a run that crashed after its last checkpoint)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")


def _yaml_dump(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
