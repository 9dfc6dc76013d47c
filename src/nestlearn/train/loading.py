"""Model weights in and out of a checkpoint: a trained model, its tokenizer and metadata from a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nestlearn.data.tokenizer import tokenizer_from_description
from nestlearn.errors import CheckpointError
from nestlearn.models.lm import CausalLM, model_config_from_dict
from nestlearn.train.checkpoint import load_checkpoint
from nestlearn.train.distributed import gather_full

CHECKPOINT = "checkpoint.safetensors"


def model_state_tensors(model: CausalLM) -> dict[str, torch.Tensor]:
    """``model/NAME`` -> full CPU tensor (FSDP shards are all-gathered, so every rank must call it)."""
    return {f"model/{k}": v for k, v in gather_full(model.state_dict()).items()}


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
        model_cfg = model_config_from_dict(meta["config"]["model"], stored=True)
    except KeyError:
        raise CheckpointError(f"{path}: metadata has no model config") from None
    model = CausalLM(model_cfg)
    load_model_weights(model, tensors, path)
    if not isinstance(meta.get("tokenizer"), dict):
        raise CheckpointError(f"{path}: metadata has no tokenizer description")
    tokenizer = tokenizer_from_description(meta["tokenizer"], meta.get("tokenizer_json"))
    return model.to(device).eval(), tokenizer, meta
