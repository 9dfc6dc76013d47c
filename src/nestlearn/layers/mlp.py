"""SwiGLU feed-forward network (Shazeer, 2020), the MLP of Transformer++."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def swiglu_hidden(d_model: int, multiple_of: int = 32) -> int:
    """Hidden width 8/3·d rounded up to a multiple of ``multiple_of``: the parameter count of a 4·d GELU MLP."""
    hidden = int(8 * d_model / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """y = W_down (SiLU(W_gate x) ⊙ W_up x).

    Args:
        d_model: input and output width.
        hidden: inner width.
    """

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_model) -> (..., d_model)."""
        return self.down(F.silu(self.gate(x)) * self.up(x))
