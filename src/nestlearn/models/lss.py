"""The model-level driver of the ``lss`` CMS signal (local surprise signal, D13; spec §1.3 Eq 9).

A CMS level ℓ written by ``lss`` learns from the model's own next-token loss. For its chunk c of
C(ℓ) tokens, covering absolute positions s … e−1, let

    L_c = Σ_{t = s}^{e−2} CE(logits_t, token_{t+1})

(targets inside the chunk only: the term whose target is the next chunk's first token is dropped),
and u_t = ∂L_c/∂y_t^{(ℓ)} the gradient with respect to the level's output, detached (a value
supplied by another level, Eq 9). At the chunk's end the level writes
θ ← θ − Σ_t η_t ∇_θ ⟨F_θ(x_t), u_t⟩ at its chunk-start weights (:func:`~nestlearn.layers.cms.lss_write`).

How :func:`lss_forward` computes it:

* The forward runs piece by piece, cut at the chunk ends of the fastest ``lss`` level (chunk c+1
  reads the weights written from chunk c's u). Inside a piece every level reads with fixed
  weights, and the ``lss`` levels record their reads (:class:`~nestlearn.layers.cms.LSSRecord`).
* At a chunk end, one ``torch.autograd.grad`` per chunk size gives u for every level of that size,
  through the part of the model above the levels (the graph of the forward itself; the engine only
  visits nodes on paths to the levels' outputs). Outer gradients flow through the writes with
  respect to x_t and θ (D3), never through u.
* Carried streams: ``lss`` chunk sizes divide one another (validated), so at every multiple of the
  slowest size all levels start a chunk. The returned state holds the fast state at the start of
  the slowest open chunk plus that chunk's tokens so far (``lss.tokens``, ``lss.learn`` in the first
  block's entry); the next call recomputes from there, so the u of a chunk cut by a call boundary
  is exactly the one-pass u. Extra cost: the recomputed part (< the slowest chunk size) per call.
* ``learn=False`` tokens (generated ones, :meth:`~nestlearn.models.lm.CausalLM.generate`) are never
  targets: a term of L_c counts only when its target token was given with ``learn=True``.
* Outside a gradient context (evaluation, generation, ``nestlearn learn``) the driver still builds a
  local graph to obtain u, and detaches what it returns. It ignores ``activation_checkpointing``.

:func:`lss_reference` is the naive oracle: for every chunk end it reruns the whole prefix with the
values u found so far fed to the CMS layers (``CMS.forward(..., u=...)``) and differentiates the
chunk's loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nestlearn.layers.cms import CMS, LSSRecord, lss_write
from nestlearn.memory import chunk_bounds
from nestlearn.models.lm import CausalLM, LMOutput, LMState

Tensor = torch.Tensor
TOKENS = "lss.tokens"
LEARN = "lss.learn"


def lss_blocks(model: CausalLM) -> dict[int, CMS]:
    """Block index -> the block's CMS, for the blocks with at least one ``lss`` level."""
    out = {}
    for k, blk in enumerate(model.blocks):
        cms = getattr(blk, "cms", None)
        if isinstance(cms, CMS) and cms.lss_levels:
            out[k] = cms
    return out


def _levels_of_size(blocks: dict[int, CMS], size: int) -> list[tuple[int, int]]:
    return [(k, i) for k, cms in blocks.items() for i in cms.lss_levels if cms.levels[i].chunk_size == size]


def _logits(model: CausalLM, h: Tensor) -> Tensor:
    return F.linear(model.norm(h), model.head_weight)


def chunk_loss(logits: Tensor, tokens: Tensor, learn: Tensor) -> Tensor:
    """L_c: the summed next-token losses of one chunk whose targets lie inside it and were given to learn from.

    Args:
        logits: (B, C, vocab) at the chunk's positions; tokens: (B, C) the chunk's tokens;
        learn: (B, C) bool, whether each token may serve as a target.
    """
    if tokens.shape[1] < 2 or not learn[:, 1:].any():
        return logits.new_zeros((), dtype=torch.float32)
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> float32, float64 kept
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1),
                          reduction="none").view(tokens.shape[0], -1)
    return (nll * learn[:, 1:]).sum()


def _values(loss: Tensor, ys: list[Tensor]) -> list[Tensor]:
    """u = ∂loss/∂y for every y, detached; zeros where y does not reach the loss."""
    if not loss.requires_grad:
        return [torch.zeros_like(y) for y in ys]
    grads = torch.autograd.grad(loss, ys, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(y) if g is None else g.detach() for y, g in zip(ys, grads)]


def _split(state: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
    if state is None:
        return None
    rest = {k: v for k, v in state.items() if k not in (TOKENS, LEARN)}
    return rest or None


def _cms_state(layer: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k[4:]: v for k, v in layer.items() if k.startswith("cms.")}


def lss_forward(model: CausalLM, tokens: Tensor, state: LMState | None = None, targets: Tensor | None = None,
                learn: bool = True) -> LMOutput:
    """:meth:`CausalLM.forward` for a model with ``lss`` CMS levels (see the module docstring).

    Args:
        model: a Hope or Hope-Attention model whose CMS uses ``cms.signal = "lss"``.
        tokens: (B, T) ids; targets: (B, T) ids or None (the outer loss only; the writes use the
            tokens themselves).
        state: the state returned by a previous call, or None.
        learn: whether these tokens may serve as targets of the writes.
    """
    blocks = lss_blocks(model)
    sizes = sorted({cms.levels[i].chunk_size for cms in blocks.values() for i in cms.lss_levels})
    fastest, slowest = sizes[0], sizes[-1]
    batch = tokens.shape[0]
    pos = 0 if state is None else state.pos
    layers = [None] * len(model.blocks) if state is None else list(state.layers)
    first = layers[0] or {}
    past = first.get(TOKENS, tokens.new_zeros(batch, 0))
    past_learn = first.get(LEARN, torch.zeros(batch, 0, dtype=torch.bool, device=tokens.device))
    layers = [_split(s) for s in layers]
    seq = torch.cat([past, tokens], dim=1)
    can_learn = torch.cat([past_learn, torch.full(tokens.shape, learn, dtype=torch.bool, device=tokens.device)], dim=1)
    start = pos - past.shape[1]
    end = start + seq.shape[1]
    keep = end - end % slowest  # the slowest open chunk starts here; the next call resumes from it
    outer_grad = torch.is_grad_enabled()
    with torch.enable_grad():
        h_all = model.embed(seq)
        tapes: dict[int, dict[int, list[LSSRecord]]] = {k: {} for k in blocks}
        pieces: list[tuple[int, Tensor]] = []
        snapshot = layers if keep == start else None
        for a, b in chunk_bounds(start, seq.shape[1], fastest):
            h = h_all[:, a:b]
            new_layers = []
            for k, (blk, s) in enumerate(zip(model.blocks, layers)):
                h, s = blk(h, s, start + a, tape=tapes[k]) if k in blocks else blk(h, s, start + a)
                new_layers.append(s)
            layers = new_layers
            pieces.append((a, _logits(model, h)))
            if (start + b) % fastest == 0:
                layers = _write(blocks, tapes, layers, pieces, seq, can_learn, start, start + b, sizes)
            if start + b == keep:
                snapshot = layers
        logits = torch.cat([lg for _, lg in pieces], dim=1)[:, past.shape[1]:]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
    lo = keep - start
    out_layers = list(snapshot)
    out_layers[0] = {**(out_layers[0] or {}), TOKENS: seq[:, lo:], LEARN: can_learn[:, lo:]}
    new_state = LMState(end, out_layers)
    if not outer_grad:
        logits, loss, new_state = logits.detach(), None if loss is None else loss.detach(), new_state.detach()
    return LMOutput(logits, loss, new_state)


def _write(blocks: dict[int, CMS], tapes: dict[int, dict[int, list[LSSRecord]]], layers: list,
           pieces: list[tuple[int, Tensor]], seq: Tensor, can_learn: Tensor, start: int, end: int,
           sizes: list[int]) -> list:
    """Apply the writes of every ``lss`` level whose chunk ends at absolute position ``end``."""
    values: dict[tuple[int, int], list[Tensor]] = {}
    for size in sizes:
        if end % size:
            continue
        lo, hi = end - size - start, end - start
        logits = torch.cat([lg for a, lg in pieces if a >= lo], dim=1)
        loss = chunk_loss(logits, seq[:, lo:hi], can_learn[:, lo:hi])
        levels = _levels_of_size(blocks, size)
        ys = [rec.y for k, i in levels for rec in tapes[k][i]]
        us = iter(_values(loss, ys))
        for k, i in levels:
            values[(k, i)] = [next(us) for _ in tapes[k][i]]
    layers = list(layers)
    for (k, i), us in values.items():
        written = lss_write(blocks[k], i, _cms_state(layers[k]), tapes[k].pop(i), us, end)
        layers[k] = {**layers[k], **{f"cms.{name}": v for name, v in written.items()}}
    return layers


def lss_reference(model: CausalLM, tokens: Tensor, learn: Tensor | None = None) -> Tensor:
    """Logits (B, T, vocab) of a fresh-state pass, computed naively (the oracle of :func:`lss_forward`).

    For every absolute position e that ends a chunk of some ``lss`` level, in order: rerun the model
    on tokens[:, :e] from the initial state with the CMS layers fed the values u found so far
    (zeros where unknown, which only affects writes at or after e), and for each chunk size C with
    C | e set u on [e−C, e) of the levels of that size to the gradient of L_c with respect to their
    outputs there. A final run with all values gives the logits. Differentiable in the slow
    parameters (u is a constant, as in the driver).

    Args:
        model: as for :func:`lss_forward`.
        tokens: (B, T) ids.
        learn: (B, T) bool, whether each token may be a target (default: all).
    """
    blocks = lss_blocks(model)
    batch, length = tokens.shape
    learn = torch.ones_like(tokens, dtype=torch.bool) if learn is None else learn
    sizes = sorted({cms.levels[i].chunk_size for cms in blocks.values() for i in cms.lss_levels})
    dtype = model.embed.weight.dtype
    values = {k: {i: torch.zeros(batch, length, model.config.d_model, dtype=dtype) for i in cms.lss_levels}
              for k, cms in blocks.items()}

    def run(n: int) -> tuple[Tensor, dict[int, dict[int, list[LSSRecord]]]]:
        h = model.embed(tokens[:, :n])
        tapes: dict[int, dict[int, list[LSSRecord]]] = {k: {} for k in blocks}
        for k, blk in enumerate(model.blocks):
            if k in blocks:
                u = {i: v[:, :n].clone() for i, v in values[k].items()}
                h, _ = blk(h, None, 0, u=u, tape=tapes[k])
            else:
                h, _ = blk(h, None, 0)
        return _logits(model, h), tapes

    with torch.enable_grad():
        for e in range(1, length + 1):
            done = [size for size in sizes if e % size == 0]
            if not done:
                continue
            logits, tapes = run(e)
            found = {}
            for size in done:
                lo = e - size
                loss = chunk_loss(logits[:, lo:e], tokens[:, lo:e], learn[:, lo:e])
                levels = _levels_of_size(blocks, size)
                us = _values(loss, [tapes[k][i][lo // size].y for k, i in levels])
                found.update({(k, i, lo): u for (k, i), u in zip(levels, us)})
            for (k, i, lo), u in found.items():
                values[k][i][:, lo:lo + u.shape[1]] = u
    return run(length)[0]
