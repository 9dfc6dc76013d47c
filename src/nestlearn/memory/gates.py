"""Gate initialisation shared by every memory layer: a sigmoid gate that starts at a chosen value."""

from __future__ import annotations

import math


def logit(p: float) -> float:
    """sigmoid⁻¹(p), the bias that makes a sigmoid gate start at p ∈ (0, 1)."""
    return math.log(p / (1 - p))
