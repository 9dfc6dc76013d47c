"""LSTM: the recurrent baseline of the formal-language table (NL-L §9.5, Table 5; tasks.md §4).

The paper's first row is an LSTM, which recognises all six languages at both bins: it is the
non-parallel reference that the parallel models are measured against. Here it is a stack of
pre-norm residual LSTM blocks in the :class:`~nestlearn.models.lm.CausalLM` frame, so that it is
trained and scored by the same task loop as every other family:

    y = x + W_out · LSTM(RMSNorm(x))

The block's fast state is the LSTM's (h, c), so a stream can be read segment by segment
(``bounded_context = False``) and the stateful API works unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nestlearn.errors import check_positive
from nestlearn.layers.norm import RMSNorm
from nestlearn.models.lm import LMConfig, register_family

State = dict[str, torch.Tensor]


@register_family("lstm")
@dataclass
class LSTMConfig(LMConfig):
    """Attributes:
        hidden: LSTM hidden/cell width per block (None: d_model).
        forget_bias: initial forget-gate bias; 1.0 is the usual choice that lets the cell keep its
            contents early in training (Jozefowicz et al. 2015).
    """

    bounded_context = False

    hidden: int | None = None
    forget_bias: float = 1.0

    def validate(self) -> None:
        super().validate()
        if self.hidden is not None:
            check_positive("model.hidden", self.hidden)

    def build_block(self, layer_idx: int) -> nn.Module:
        return LSTMBlock(self)


class LSTMBlock(nn.Module):
    """x + W_out LSTM(RMSNorm(x)). State: ``h`` and ``c``, each (batch, hidden)."""

    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        self.hidden = cfg.hidden or cfg.d_model
        self.forget_bias = cfg.forget_bias
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lstm = nn.LSTM(cfg.d_model, self.hidden, batch_first=True)
        self.out = nn.Linear(self.hidden, cfg.d_model, bias=False)

    def reset_special_parameters(self) -> None:
        """PyTorch's uniform LSTM initialisation, with the forget-gate bias set (gate order i, f, g, o)."""
        self.lstm.reset_parameters()
        with torch.no_grad():
            h = self.hidden
            self.lstm.bias_ih_l0[h:2 * h].fill_(self.forget_bias)
            self.lstm.bias_hh_l0[h:2 * h].zero_()

    def init_state(self, batch_size: int, device: torch.device | str | None, dtype: torch.dtype | None) -> State:
        zeros = torch.zeros(batch_size, self.hidden, device=device, dtype=dtype)
        return {"h": zeros, "c": zeros.clone()}

    def forward(self, x: torch.Tensor, state: State | None = None, pos: int = 0,
                keep_state: bool = True) -> tuple[torch.Tensor, State]:
        """x: (batch, seq, d_model) -> (same shape, {h, c}: (batch, hidden) each; {} without ``keep_state``)."""
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        y, (h, c) = self.lstm(self.norm(x), (state["h"].unsqueeze(0), state["c"].unsqueeze(0)))
        return x + self.out(y), ({"h": h.squeeze(0), "c": c.squeeze(0)} if keep_state else {})
