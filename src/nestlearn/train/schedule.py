"""The learning-rate schedule and the batch sampler of the training loop."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier for optimizer step ``step`` (0-based): linear warm-up, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def sample_batch(ids: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of ``seq_len + 1`` tokens (they may cross document boundaries).

    Returns:
        inputs, targets: each (batch_size, seq_len), targets shifted by one.
    """
    starts = torch.randint(0, len(ids) - seq_len, (batch_size,), generator=generator)
    window = ids[starts[:, None] + torch.arange(seq_len + 1)[None, :]].long()
    return window[:, :-1], window[:, 1:]
