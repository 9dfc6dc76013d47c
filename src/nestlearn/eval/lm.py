"""Language-model evaluation in bits per byte (data.md §1, "Use")."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from nestlearn.errors import ConfigError, DataError, check_positive
from nestlearn.models.lm import CausalLM


@torch.no_grad()
def evaluate_bpb(model: CausalLM, ids: torch.Tensor, token_bytes: torch.Tensor, seq_len: int,
                 batch_size: int = 16, max_tokens: int = 0, bf16: bool = False) -> dict[str, float]:
    """Score a token stream with contiguous, non-overlapping windows; fast state reset per window (D18).

    Window i predicts targets ``ids[i·L+1 : (i+1)·L+1]`` from inputs ``ids[i·L : (i+1)·L]``, so every
    token but the first is scored exactly once; the last, partial window is included.

    Args:
        model: the language model.
        ids: (n,) token ids of the split.
        token_bytes: (vocab,) bytes of text per token id, so that bpb compares across tokenizers.
        seq_len: window length L.
        batch_size: windows per forward pass.
        max_tokens: score only the first this many targets (0: all).
        bf16: bfloat16 autocast.

    Returns:
        ``bpb`` (nats / (ln 2 · bytes)), ``loss`` (nats per token), ``tokens`` and ``bytes`` scored.
    """
    check_positive("seq_len", seq_len)
    check_positive("batch_size", batch_size)
    device = next(model.parameters()).device
    n_targets = len(ids) - 1 if max_tokens <= 0 else min(len(ids) - 1, max_tokens)
    if n_targets < 1:
        raise DataError(f"nothing to score: the split has {len(ids)} token(s); bits per byte need at least 2")
    token_bytes = token_bytes.to(device)
    was_training = model.training
    model.eval()
    total_nats, total_bytes = 0.0, 0
    starts = list(range(0, n_targets, seq_len))
    full = [s for s in starts if s + seq_len <= n_targets]
    partial = [s for s in starts if s + seq_len > n_targets]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    offsets = torch.arange(seq_len + 1)
    groups = [full[i:i + batch_size] for i in range(0, len(full), batch_size)] + [[s] for s in partial]
    for group in groups:
        length = min(seq_len, n_targets - group[0])
        window = ids[torch.tensor(group)[:, None] + offsets[None, :length + 1]].to(device)
        with autocast:
            logits = model(window[:, :-1], keep_state=False).logits
        targets = window[:, 1:]
        nats = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
        total_nats += nats.item()
        total_bytes += int(token_bytes[targets].sum().item())
    model.train(was_training)
    return {"bpb": total_nats / (math.log(2) * max(total_bytes, 1)), "loss": total_nats / max(n_targets, 1),
            "tokens": n_targets, "bytes": total_bytes}


@torch.no_grad()
def evaluate_bpb_carried(model: CausalLM, ids: torch.Tensor, token_bytes: torch.Tensor, seq_len: int,
                         streams: int = 8, max_tokens: int = 0) -> dict[str, float]:
    """Score a token stream with the fast state carried across windows (D18 ``carry``).

    The split is cut into ``streams`` contiguous parts of equal length (the remainder at the end is
    left out); each part is read as one stream in windows of ``seq_len`` tokens, the state of one
    window starting the next, and the parts run side by side as a batch. This measures what a
    recurrent model gains (or loses) from memory beyond its training length; compare it with
    :func:`evaluate_bpb` on the same tokens. Only models without a bounded context can carry.

    Args:
        model: a language model with ``config.bounded_context = False``.
        ids: (n,) token ids of the split.
        token_bytes: (vocab,) bytes of text per token id.
        seq_len: tokens per forward pass (the carried state spans all windows of a part).
        streams: parts read in parallel, >= 1.
        max_tokens: score only about the first this many targets (0: all).

    Returns:
        ``bpb``, ``loss`` (nats per token), ``tokens`` and ``bytes`` scored.
    """
    if model.config.bounded_context:
        raise ConfigError("model.family", f"{model.config.family!r} has a bounded context and cannot carry "
                          "its state across windows; use evaluate_bpb")
    check_positive("streams", streams)
    check_positive("seq_len", seq_len)
    device = next(model.parameters()).device
    n_targets = len(ids) - 1 if max_tokens <= 0 else min(len(ids) - 1, max_tokens)
    per = n_targets // streams
    if per == 0:
        raise ConfigError("streams", f"is {streams} but the split has only {n_targets} targets")
    rows = torch.arange(streams)[:, None] * per + torch.arange(per + 1)[None, :]
    window = ids[rows].to(device)
    inputs, targets = window[:, :-1], window[:, 1:]
    was_training = model.training
    model.eval()
    state = model.init_state(streams, device=device)
    total_nats = 0.0
    for start in range(0, per, seq_len):
        out = model(inputs[:, start:start + seq_len], state=state)
        state = out.state
        chunk = targets[:, start:start + seq_len]
        total_nats += F.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]), chunk.reshape(-1),
                                      reduction="sum").item()
    model.train(was_training)
    total_bytes = int(token_bytes.to(device)[targets].sum().item())
    n = streams * per
    return {"bpb": total_nats / (math.log(2) * max(total_bytes, 1)), "loss": total_nats / n, "tokens": n,
            "bytes": total_bytes}
