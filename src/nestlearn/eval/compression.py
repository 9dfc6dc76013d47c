"""The auto-encoder that scores MAD's compression task (tasks.md §8).

Compression asks a sequence mixer to fold a whole random sequence into the state at its last token.
As in MAD, the encoder is the model under test (here any nestlearn family: its embedding, blocks and
final norm) read at the last position only, and a small fixed decoder (no sequence mixing) must
rebuild every input token from that one vector plus a sinusoidal code of the position it is asked
for. The decoder is the same for every family, so the score measures the encoder's bottleneck.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nestlearn.layers.norm import RMSNorm
from nestlearn.models.lm import CausalLM


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) fixed sin/cos position codes: half sines, half cosines (an odd dim drops the last cosine)."""
    half = (dim + 1) // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    angles = torch.arange(length)[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)[:, :dim]


class CompressionModel(nn.Module):
    """Encoder (a :class:`CausalLM` without its head) -> last state -> position-wise MLP decoder.

    Args:
        encoder: the model under test; its head is unused.
        num_classes: output classes of the decoder.
    """

    def __init__(self, encoder: CausalLM, num_classes: int):
        super().__init__()
        d = encoder.config.d_model
        self.encoder = encoder
        self.register_buffer("positions", sinusoidal_positions(encoder.config.max_seq_len, d), persistent=False)
        # MAD's non-expanding decoder: two normed GELU layers, then a normed read-out.
        self.decoder = nn.Sequential(RMSNorm(d), nn.Linear(d, d), nn.GELU(), RMSNorm(d), nn.Linear(d, d), nn.GELU(),
                                     RMSNorm(d), nn.Linear(d, num_classes))

    @property
    def config(self):
        """The encoder's config: the decoder's shape follows from it and the classes (cell digests hash it)."""
        return self.encoder.config

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, T) ids -> (B, T, num_classes) logits of the token at every position."""
        enc = self.encoder
        x = enc.embed(tokens)
        for blk in enc.blocks:
            x, _ = blk(x, None, 0, False)
        code = enc.norm(x[:, -1])
        return self.decoder(code[:, None, :] + self.positions[: tokens.shape[1]])

    def num_parameters(self, non_embedding: bool = True) -> int:
        """Parameters of the encoder (as :meth:`CausalLM.num_parameters`) and the decoder."""
        return self.encoder.num_parameters(non_embedding) + sum(p.numel() for p in self.decoder.parameters())
