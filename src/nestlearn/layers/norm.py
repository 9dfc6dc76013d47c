"""RMSNorm (Zhang & Sennrich, 2019), the pre-norm used by every block in nestlearn."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = x / rms(x) * g over the last axis.

    Args:
        dim: size of the normalised (last) axis.
        eps: added to the mean square before the square root.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim) -> (..., dim)."""
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
