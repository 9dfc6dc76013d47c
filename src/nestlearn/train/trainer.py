"""The training loop: one readable function from config to report.

AdamW (or any ``nestlearn.optim`` optimizer) with linear warm-up and cosine decay, gradient
accumulation and clipping, optional bf16 autocast, periodic validation in bits per byte, a progress
bar, metrics as JSON lines (and optionally TensorBoard events), atomic checkpoints that resume
bit-exactly, and a report per run. Under torchrun the same loop runs on every process with DDP or
FSDP2 (:mod:`nestlearn.train.distributed`); ``train.compile`` and ``train.activation_checkpointing``
trade compile time or compute for speed or memory.
"""

from __future__ import annotations

import contextlib
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
from nestlearn.memory import compile_chunk_step, monitor
from nestlearn.models.lm import CausalLM, replace_config
from nestlearn.optim.config import build_optimizer
from nestlearn.provenance import provenance
from nestlearn.switches import resolved_switches
from nestlearn.train.checkpoint import (decode_bytes, encode_bytes, flatten, load_checkpoint, remove_stale_temp_files,
                                        save_checkpoint, unflatten)
from nestlearn.train.config import OPERATIONAL_FIELDS, RunConfig, config_diff, stored_run_config
from nestlearn.train.distributed import (all_reduce_sum, barrier, broadcast_object, check_optimizer, full_tensor,
                                         gather_full, grad_sync, local_rows, setup,
                                         shard_optimizer_state, wrap_model)
from nestlearn.train.loading import CHECKPOINT, load_model_weights
from nestlearn.train.report import plot_metrics, write_report
from nestlearn.train.runlog import METRICS, RunLog, eval_record, fast_norms, summary_writer_class, truncate_metrics
from nestlearn.train.schedule import lr_factor, sample_batch

class TrainingDiverged(NestlearnError):
    """The training loss became NaN or infinite."""


def build_tokenizer(cfg: RunConfig, train_text: bytes):
    if cfg.data.tokenizer == "byte":
        return ByteTokenizer()
    return BPETokenizer.train(train_text, cfg.data.bpe_vocab_size)


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
        self.dist, self.device = setup(tc.distributed, tc.device)
        if self.device.type == "cpu":
            torch.set_flush_denormal(tc.flush_denormal)
        if tc.compile_chunks:
            compile_chunk_step()
        check_optimizer(self.dist, cfg.optim.name)
        if tc.tensorboard and self.dist.is_main:
            summary_writer_class()

        ckpt_tensors, ckpt_meta = (None, None)
        if resume is not None:
            ckpt_tensors, ckpt_meta = load_checkpoint(resume)
            if "optimizer" not in ckpt_meta or "rng" not in ckpt_meta:
                raise CheckpointError(f"{resume} holds model weights only (no optimizer or data state, e.g. "
                                      "converted from a Hugging Face folder), so it cannot be resumed; use it "
                                      "with nestlearn eval / generate / learn, or start a new run")
            self._check_resume_config(ckpt_meta, allow_config_change, Path(resume))
        elif (self.out / CHECKPOINT).exists():
            raise ConfigError("train.out_dir", f"{self.out} already holds a checkpoint; continue it with "
                              f"--resume {self.out}, or choose another train.out_dir")

        self.corpus = load_corpus(cfg.data)
        if ckpt_meta is not None:
            self.tokenizer = tokenizer_from_description(ckpt_meta["tokenizer"], ckpt_meta.get("tokenizer_json"))
        elif cfg.data.tokenizer == "byte" or self.dist.world_size == 1:
            self.tokenizer = build_tokenizer(cfg, self.corpus.train)
        else:
            # Rank 0 trains the BPE tokenizer once; the other ranks rebuild it from its description.
            built = build_tokenizer(cfg, self.corpus.train) if self.dist.is_main else None
            desc = broadcast_object((built.describe(), built.to_json()) if built else None, self.dist)
            self.tokenizer = built or tokenizer_from_description(*desc)
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
        self.model.activation_checkpointing = tc.activation_checkpointing
        if ckpt_meta is not None:
            # Before FSDP shards it: the checkpoint holds whole tensors.
            load_model_weights(self.model, ckpt_tensors, Path(resume))
        # self.model stays the CausalLM (sharded in place under FSDP) for validation, sampling and
        # checkpoints; the training forward goes through the DDP wrapper and torch.compile.
        self.wrapped = wrap_model(self.model, self.dist, self.device, tc.seq_len)
        self.train_model = torch.compile(self.wrapped) if tc.compile else self.wrapped
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.data_gen = torch.Generator().manual_seed(tc.seed)
        self.step = 0
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.last_eval: dict[str, float] = {}
        self.overrides: list[dict] = []
        self.saved_on_interrupt = False
        self.provenance = provenance()
        if ckpt_meta is not None:
            self._restore(ckpt_tensors, ckpt_meta, Path(resume))

    # -- checkpoints ---------------------------------------------------------------------------------
    def _check_resume_config(self, meta: dict, allow: bool, path: Path) -> None:
        saved = meta.get("config")
        if saved is None:
            raise CheckpointError(f"{path}: metadata has no config")
        saved = stored_run_config(saved)
        mine = self.cfg.to_dict()
        if mine["model"].get("vocab_size") is None:
            mine["model"]["vocab_size"] = saved["model"].get("vocab_size")
        diffs = [d for d in config_diff(saved, mine) if d[0] not in OPERATIONAL_FIELDS]
        if diffs and not allow:
            listing = "; ".join(f"{name}: checkpoint {a!r}, requested {b!r}" for name, a, b in diffs)
            raise CheckpointError(f"{path} was trained with a different config ({listing}); pass "
                                  "--allow-config-change to resume anyway")
        saved_world = meta.get("world_size", 1)
        if saved_world != self.dist.world_size:
            if not allow:
                raise CheckpointError(
                    f"{path} was trained on {saved_world} process(es) and this run has {self.dist.world_size}; "
                    "the global batch (batch_size × grad_accum × processes) would change. Pass "
                    "--allow-config-change to resume anyway, or scale train.batch_size or train.grad_accum")
            diffs.append(("world_size", saved_world, self.dist.world_size))
        self._resume_diffs = diffs

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict, path: Path) -> None:
        opt_state = unflatten(meta["optimizer"], tensors)
        if self.dist.sharded:
            opt_state = shard_optimizer_state(self.optimizer, opt_state)
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
        if self.dist.is_main:
            truncate_metrics(self.out / METRICS, self.step)

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
                "world_size": self.dist.world_size, "distributed": self.dist.mode,
                "switches": resolved_switches(self.cfg.to_dict()), "provenance": self.provenance}

    def save(self, wait: bool = True) -> Path:
        """Write the checkpoint from rank 0 (all ranks call it: FSDP gathers the shards).

        ``wait``: the other ranks wait until the file is written (False when interrupted, where
        they may not all get here).
        """
        main = self.dist.is_main
        tensors = {f"model/{k}": v for k, v in gather_full(self.model.state_dict(), keep=main).items()}
        optimizer_state = gather_full(self.optimizer.state_dict(), keep=main)
        path = self.out / CHECKPOINT
        if main:
            meta = self.metadata()
            meta["optimizer"] = flatten(optimizer_state, "optim", tensors)
            save_checkpoint(path, tensors, meta)
        if wait:
            barrier(self.dist)
        return path

    # -- the loop ------------------------------------------------------------------------------------
    def _autocast(self):
        if self.cfg.train.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def evaluate(self, full: bool = False) -> dict[str, float]:
        tc = self.cfg.train
        with monitor.watch() as mon:
            scores = evaluate_bpb(self.model, self.val_ids, self.token_bytes, tc.seq_len, tc.batch_size,
                                  0 if full else tc.eval_tokens, tc.bf16)
        return scores | fast_norms(mon)

    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns its metrics."""
        tc = self.cfg.train
        factor = lr_factor(self.step, tc.steps, tc.warmup_steps, tc.min_lr_ratio)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        nats = torch.zeros((), dtype=torch.float64, device=self.device)
        n_bytes = 0
        # On logged steps the forward runs under the fast-weight monitor (design.md S6); it reads a
        # norm per chunk, which a step without a log line need not pay for.
        logged = (self.step + 1) % tc.log_every == 0 or self.step + 1 == (tc.stop_at or tc.steps)
        watched = monitor.watch() if logged else contextlib.nullcontext()
        inputs = []
        with watched as mon:
            for i in range(tc.grad_accum):
                # Every rank draws the same global micro-batch and keeps its own rows (distributed.py).
                x, y = sample_batch(self.train_ids, tc.batch_size * self.dist.world_size, tc.seq_len, self.data_gen)
                x, y = local_rows(x, self.dist), local_rows(y, self.dist)
                n_bytes += int(self.token_bytes[y].sum())
                x, y = x.to(self.device), y.to(self.device)
                inputs.append(x)
                with grad_sync(self.wrapped, self.dist, last=i == tc.grad_accum - 1):
                    with self._autocast():
                        loss = self.train_model(x, y)
                    (loss / tc.grad_accum).backward()
                nats += loss.detach().double() * y.numel()
        totals = all_reduce_sum(torch.stack([nats, torch.tensor(float(n_bytes), dtype=torch.float64,
                                                                device=self.device)]), self.dist)
        total_nats, total_bytes = totals.tolist()
        n_tokens = self.tokens_per_step
        if not math.isfinite(total_nats):
            # Checked after the all-reduce so that every rank stops at the same step.
            raise TrainingDiverged(
                f"training diverged at step {self.step + 1}: the loss is {total_nats / n_tokens}"
                f"{self._first_nonfinite(inputs)}; lower optim.lr (now {self.cfg.optim.lr}) or raise "
                f"train.warmup_steps; the last checkpoint is kept")
        grad_norm = 0.0
        if tc.grad_clip > 0:
            grad_norm = float(full_tensor(torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += n_tokens
        metrics = {"loss": total_nats / n_tokens, "bpb": total_nats / (math.log(2) * max(total_bytes, 1)),
                   "lr": self.base_lrs[0] * factor, "grad_norm": grad_norm}
        return metrics | (fast_norms(mon) if logged else {})

    @torch.no_grad()
    def _first_nonfinite(self, inputs: list[torch.Tensor]) -> str:
        """Where the diverged step's forward first became non-finite: its micro-batches replayed
        under the monitor (design.md S6); empty when the replay is finite (the backward diverged)."""
        for x in inputs:
            with monitor.watch() as mon, self._autocast():
                self.model(x)
            if mon.first_nonfinite is not None:
                return f"; the fast weights first became non-finite in {mon.first_nonfinite}"
        return ""

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step over all processes: batch_size × grad_accum × world_size × seq_len."""
        tc = self.cfg.train
        return tc.grad_accum * tc.batch_size * self.dist.world_size * tc.seq_len

    def run(self) -> dict[str, Any]:
        """Train until ``train.steps`` (or ``train.stop_at``); returns the final metrics.

        Every rank runs the loop; rank 0 alone writes files and shows the progress bar.
        """
        tc = self.cfg.train
        main = self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(self.out, CHECKPOINT)
            (self.out / "config.yaml").write_text(_yaml_dump(self.cfg.to_dict()), encoding="utf-8")
            if isinstance(self.tokenizer, BPETokenizer):
                self.tokenizer.save(self.out)
        stop = tc.stop_at or tc.steps
        bar = tqdm(total=tc.steps, initial=self.step, desc="train", unit="step", disable=not (self.progress and main),
                   dynamic_ncols=True)
        log = RunLog(self.out, enabled=main, tensorboard=tc.tensorboard, purge_step=self.step + 1 if self.step else None)
        window_start, window_tokens = time.perf_counter(), 0
        if self.step == 0:
            # The untrained model's score anchors the curve (about 8 bits per byte for bytes).
            self.last_eval = self.evaluate()
            log.write({"step": 0, **eval_record(self.last_eval)})
        try:
            while self.step < stop:
                t0 = time.perf_counter()
                m = self.train_step()
                self.elapsed += time.perf_counter() - t0
                window_tokens += self.tokens_per_step
                bar.update(1)
                if self.step % tc.log_every == 0 or self.step == stop:
                    tok_s = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                    window_start, window_tokens = time.perf_counter(), 0
                    log.write({"step": self.step, **m, "tokens": self.tokens_seen, "tok_per_s": tok_s,
                               "elapsed_s": self.elapsed})
                    bar.set_postfix(loss=f"{m['loss']:.3f}", bpb=f"{m['bpb']:.3f}", tok_s=f"{tok_s:.0f}")
                final = self.step == tc.steps
                if self.step % tc.eval_every == 0 or final:
                    self.last_eval = self.evaluate(full=final)
                    log.write({"step": self.step, **eval_record(self.last_eval)})
                    bar.set_postfix(loss=f"{m['loss']:.3f}", val_bpb=f"{self.last_eval['bpb']:.3f}")
                if self.step % tc.ckpt_every == 0 or self.step == stop:
                    log.flush()
                    self.save()
        except KeyboardInterrupt:
            log.flush()
            # Gathering FSDP shards needs every rank, which an interrupt does not guarantee: an
            # FSDP run keeps its last periodic checkpoint.
            self.saved_on_interrupt = not self.dist.sharded
            if self.saved_on_interrupt:
                self.save(wait=False)
            raise
        finally:
            bar.close()
            log.close()
        result = {"step": self.step, "steps": tc.steps, "tokens_seen": self.tokens_seen, "elapsed_s": self.elapsed,
                  "val": self.last_eval, "parameters": self.model.num_parameters(non_embedding=False)}
        if self.step == tc.steps:
            result["sample"] = self.sample()
            if main:
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


def _yaml_dump(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
