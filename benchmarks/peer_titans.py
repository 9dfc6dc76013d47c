"""titans-pytorch's ``NeuralMemory`` configured to the work of nestlearn's Titans memory layer (the peer).

Used by ``memory_layer.py --peer``. titans-pytorch is an optional benchmark dependency
(``pip install -e ".[bench]"``), never one of the library's.

Matched: width 256, 4 heads of 64, chunk 64, a 2-layer MLP memory per head with hidden width 64 and a
residual (titans-pytorch wraps its memory model in a residual with a norm), L2 objective, first-order
momentum and decay, gradients through every write, every parameter trained. The weights a chunk reads
are those of the chunk boundaries (titans-pytorch's ``batch_size`` = chunk).
"""

from __future__ import annotations

from torch import nn

# What could not be made equal, written beside every measured ratio.
DIFFERENCES = (
    "gates: nestlearn computes a step, momentum and decay per token; titans-pytorch per chunk",
    "nestlearn reads the memory after each token's write inside a chunk (read=after); titans-pytorch "
    "reads the weights of the previous chunk boundary",
    "nestlearn has a width-4 depthwise convolution on q, k, v and a full d × d output gate; titans-pytorch "
    "has neither convolution nor full gate (a per-head scalar output gate is off at its defaults)",
    "step bound: titans-pytorch's step at its default bound (1.0) makes the output non-finite on these "
    "inputs (first at token 703 of 1,024, seed 0), so the peer runs with a bound of 0.1; nestlearn runs "
    "at its defaults (η_max 1, stability switches of docs/design.md S1–S5)",
)


class PeerUnavailable(RuntimeError):
    """titans-pytorch is not installed."""


def peer_layer(width: int, heads: int, chunk: int) -> nn.Module:
    """``NeuralMemory`` doing the same work as ``TitansConfig(width, heads, chunk).memory_layer()``."""
    try:
        from titans_pytorch import NeuralMemory
        from titans_pytorch.memory_models import MemoryMLP
    except ImportError as e:  # the optional extra is missing
        raise PeerUnavailable("--peer needs titans-pytorch: pip install -e \".[bench]\"") from e
    head = width // heads
    return NeuralMemory(dim=width, chunk_size=chunk, batch_size=chunk, heads=heads, dim_head=head,
                        model=MemoryMLP(dim=head, depth=2, expansion_factor=1.0), momentum=True,
                        default_step_transform_max_lr=0.1)

