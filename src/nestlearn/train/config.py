"""The run configuration: ``model``, ``data``, ``optim`` and ``train`` sections of one YAML file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nestlearn.config import apply_overrides, from_dict, load_yaml, to_dict
from nestlearn.data.corpus import DataConfig
from nestlearn.errors import ConfigError, check_choice, check_positive, check_range
from nestlearn.models.lm import LMConfig, model_config_from_dict, model_config_to_dict
from nestlearn.optim.config import OptimConfig
from nestlearn.train.distributed import MODES


@dataclass
class TrainConfig:
    """Attributes:
        seed: seeds initialisation, batch sampling and the sample text.
        steps: optimizer steps in the whole run (the schedule's length).
        stop_at: stop this invocation after this step with a checkpoint (0: run to ``steps``); resume later.
        batch_size: sequences per micro-batch.
        seq_len: tokens per training sequence.
        grad_accum: micro-batches per optimizer step.
        warmup_steps: linear warm-up from 0 to the peak learning rate.
        min_lr_ratio: final learning rate of the cosine decay, as a fraction of the peak.
        grad_clip: clip the global gradient norm to this (0: no clipping).
        bf16: bfloat16 autocast for the forward pass.
        eval_every: validate every this many steps (and at the end).
        eval_tokens: tokens of the validation split scored at intermediate validations (0: all).
        ckpt_every: checkpoint every this many steps (and at the end).
        log_every: write a metrics line every this many steps.
        sample_tokens: length of the sample text in the report.
        out_dir: run folder (metrics, checkpoint, plot, report).
        device: "auto", "cpu" or "cuda".
        threads: CPU threads for torch (0: torch's default).
        flush_denormal: on CPU, flush subnormal floats to zero (``torch.set_flush_denormal``): a
            value that decays into the subnormal range costs several times a normal one on x86, and
            results change only below float32's smallest normal number (docs/performance.md).
        distributed: how several processes started by torchrun share the work: ``"ddp"``
            (replicated model, averaged gradients) or ``"fsdp"`` (FSDP2, parameters, gradients and
            optimizer states sharded; optim.name adamw, muon or m3). Ignored in one process. The
            global batch is batch_size × grad_accum × number of processes
            (:mod:`nestlearn.train.distributed`).
        compile: ``torch.compile`` the training forward and backward (validation and sampling stay eager).
        compile_chunks: ``torch.compile`` only the memories' chunk steps
            (:func:`nestlearn.memory.compile_chunk_step`: Titans, the delta-rule families, Hope's
            self-modifying memories and CMS levels), for training and validation alike. Compiling
            takes minutes on CPU, so it pays off in long runs only (docs/performance.md).
        activation_checkpointing: recompute each block's activations in the backward pass instead
            of storing them (less memory for long sequences, about one more forward of compute).
        tensorboard: also write the logged scalars as TensorBoard events to ``out_dir/tensorboard``
            (needs ``pip install 'nestlearn[tensorboard]'``).
    """

    seed: int = 0
    steps: int = 1000
    stop_at: int = 0
    batch_size: int = 16
    seq_len: int = 256
    grad_accum: int = 1
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    bf16: bool = False
    eval_every: int = 200
    eval_tokens: int = 65536
    ckpt_every: int = 200
    log_every: int = 10
    sample_tokens: int = 300
    out_dir: str = "runs/default"
    device: str = "auto"
    threads: int = 0
    flush_denormal: bool = True
    distributed: str = "ddp"
    compile: bool = False
    compile_chunks: bool = False
    activation_checkpointing: bool = False
    tensorboard: bool = False

    def validate(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_every", "ckpt_every", "log_every"):
            check_positive(f"train.{name}", getattr(self, name))
        # torch.manual_seed takes a 64-bit integer.
        check_range("train.seed", self.seed, 0, 2**63 - 1)
        for name in ("stop_at", "warmup_steps", "eval_tokens", "sample_tokens", "threads", "grad_clip"):
            check_positive(f"train.{name}", getattr(self, name), allow_zero=True)
        check_range("train.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        check_choice("train.device", self.device, ("auto", "cpu", "cuda"))
        check_choice("train.distributed", self.distributed, MODES)
        if not self.out_dir:
            raise ConfigError("train.out_dir", "must be a folder path, got ''")
        if self.stop_at > self.steps:
            raise ConfigError("train.stop_at", f"must be <= train.steps={self.steps}, got {self.stop_at}")


# Fields that change how a run is operated, not what it computes: they may differ on --resume.
OPERATIONAL_FIELDS = {"train.stop_at", "train.eval_every", "train.eval_tokens", "train.ckpt_every",
                      "train.log_every", "train.sample_tokens", "train.out_dir", "train.device", "train.threads",
                      "train.distributed", "train.compile", "train.compile_chunks", "train.activation_checkpointing", "train.tensorboard"}


@dataclass
class RunConfig:
    model: LMConfig
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": model_config_to_dict(self.model), "data": to_dict(self.data),
                "optim": to_dict(self.optim), "train": to_dict(self.train)}


SECTIONS = ("model", "data", "optim", "train")


def run_config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig`, rejecting unknown sections and keys."""
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(str(key), f"unknown section; allowed: {', '.join(SECTIONS)}")
    for key in SECTIONS:
        if not isinstance(data.get(key, {}), dict):
            raise ConfigError(key, f"must be a mapping of fields, got {data[key]!r}")
    return RunConfig(
        model=model_config_from_dict(data.get("model", {})),
        data=from_dict(DataConfig, data.get("data", {}), prefix="data"),
        optim=from_dict(OptimConfig, data.get("optim", {}), prefix="optim"),
        train=from_dict(TrainConfig, data.get("train", {}), prefix="train"),
    )


def stored_run_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run config dict read back from a checkpoint, its model section as that run was trained: every
    field filled in, those the checkpoint predates at their legacy values (:func:`nestlearn.config.from_dict`)."""
    if not isinstance(config.get("model"), dict):
        return config
    return {**config, "model": model_config_to_dict(model_config_from_dict(config["model"], stored=True))}


def load_run_config(path: str | Path | None, overrides: list[str] | None = None,
                    base: dict[str, Any] | None = None) -> RunConfig:
    """``base`` dict, then the YAML file, then ``--set`` overrides, in that order of precedence."""
    data = _merge(base or {}, load_yaml(path) if path else {})
    return run_config_from_dict(apply_overrides(data, overrides or []))


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Dotted fields whose values differ between two config dicts, with both values."""
    out = []
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}.{key}" if prefix else key
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(config_diff(va, vb, name))
        elif va != vb:
            out.append((name, va, vb))
    return out
