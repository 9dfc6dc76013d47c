"""A model that keeps learning: feed it a stream, keep its fast state, save it, query later.

The fast state of a model (every memory, momentum and CMS level, plus the position) is an
:class:`~nestlearn.models.lm.LMState`. This module saves and loads it with safetensors (atomically,
with the model's fingerprint so a state is never loaded into another model) and reads text into it
segment by segment under a reset policy (D18):

- ``"carry"``: never reset, the whole text is one stream (the default for the stateful API);
- ``"reset"``: every segment starts from the initial state (pre-training behaviour);
- ``"separator"``: reset where a document separator occurs, carry within a document.

Reading is inference: no gradient, the slow parameters never change; only the fast memories learn.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

from nestlearn.errors import CheckpointError, ConfigError, NestlearnError, check_choice
from nestlearn.models.lm import CausalLM, LMState, model_config_to_dict
from nestlearn.train.checkpoint import load_checkpoint, remove_stale_temp_files, save_checkpoint

POLICIES = ("carry", "reset", "separator")
STATE_KIND = "nestlearn-state"


def model_fingerprint(model: CausalLM) -> str:
    """SHA-256 of the model's config and weights: a state belongs to exactly one model."""
    h = hashlib.sha256(json.dumps(model_config_to_dict(model.config), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_state(path: str | Path, model: CausalLM, state: LMState, info: dict | None = None) -> Path:
    """Write ``state`` (every tensor materialised, batch axis kept) atomically to a safetensors file."""
    path = Path(path)
    # What a killed earlier write of this same file left behind (the file itself is replaced below).
    remove_stale_temp_files(path.parent, path.name)
    tensors = {k: v.detach().clone() for k, v in state.flat().items()}
    meta = {"kind": STATE_KIND, "pos": state.pos, "n_layers": len(state.layers),
            "family": model.config.family, "model_sha256": model_fingerprint(model), **(info or {})}
    return save_checkpoint(path, tensors, meta)


def load_state(path: str | Path, model: CausalLM) -> tuple[LMState, dict]:
    """Read a state written by :func:`save_state` for this very model; anything else is an error."""
    if not Path(path).is_file():
        raise CheckpointError(f"state file not found: {path}")
    tensors, meta = load_checkpoint(path, what="state file")
    if meta.get("kind") != STATE_KIND:
        raise CheckpointError(f"{path} is not a nestlearn state file (it is a {meta.get('kind', 'model checkpoint')})")
    if meta.get("model_sha256") != model_fingerprint(model):
        raise CheckpointError(f"{path} was written by another model ({meta.get('family')}, fingerprint "
                              f"{str(meta.get('model_sha256'))[:12]}); a state only fits the model that produced it")
    missing = sorted(set(model.init_state(1).flat()) - set(tensors))
    if missing:
        # The model's state layout changed since the file was written (e.g. CMS levels, design.md S13).
        raise CheckpointError(f"{path} lacks state entries this version of nestlearn needs ({', '.join(missing[:3])}"
                              f"{', …' if len(missing) > 3 else ''}); it was written by another version: read the "
                              "stream into a fresh state again")
    device = next(model.parameters()).device
    return LMState.from_flat(meta["pos"], meta["n_layers"], {k: v.to(device) for k, v in tensors.items()}), meta


def document_spans(ids: torch.Tensor, separator: torch.Tensor | None) -> list[tuple[int, int]]:
    """[start, end) spans of the documents in ``ids``; each separator ends the document it closes."""
    if separator is None or len(separator) == 0:
        return [(0, len(ids))]
    n, spans, start = len(separator), [], 0
    hits = (ids.unfold(0, n, 1) == separator).all(dim=1).nonzero().flatten().tolist() if len(ids) >= n else []
    for hit in hits:
        if hit >= start:
            spans.append((start, hit + n))
            start = hit + n
    if start < len(ids):
        spans.append((start, len(ids)))
    return spans


@torch.no_grad()
def learn(model: CausalLM, ids: torch.Tensor, state: LMState | None = None, segment: int = 512,
          policy: str = "carry", separator: torch.Tensor | None = None) -> tuple[LMState, dict]:
    """Read token ids into the model's fast state.

    Args:
        model: a model; families with a bounded context accept at most ``model.max_seq_len`` tokens of stream.
        ids: (n,) token ids of the text.
        state: state to continue (None: a fresh one).
        segment: tokens per forward call; results do not depend on it except under ``"reset"``.
        policy: ``"carry"``, ``"reset"`` or ``"separator"`` (see the module docstring).
        separator: (m,) token ids of the document separator, for ``policy="separator"``.

    Returns:
        the new state (batch 1) and statistics: tokens read, documents, and the bits per token of
        the stream as it was read (each token scored before the model learned from it).
    """
    check_choice("policy", policy, POLICIES)
    if segment <= 0:
        raise ConfigError("segment", f"must be > 0, got {segment}")
    if policy == "separator" and (separator is None or len(separator) == 0):
        raise ConfigError("separator", "policy 'separator' needs a non-empty separator")
    if len(ids) == 0:
        raise NestlearnError("the text to learn is empty")
    device = next(model.parameters()).device
    ids = ids.to(device)
    state = model.init_state(1) if state is None else state
    if model.config.bounded_context and policy == "carry" and state.pos + len(ids) > model.config.max_seq_len:
        raise NestlearnError(
            f"a {model.config.family} model holds at most model.max_seq_len={model.config.max_seq_len} tokens of "
            f"stream (it has {state.pos}, the text adds {len(ids)}); use a recurrent family such as hope or titans")
    docs = document_spans(ids, separator if policy == "separator" else None)
    nats, scored = 0.0, 0
    for d, (start, end) in enumerate(docs):
        if policy == "separator" and d > 0:
            state = model.init_state(1)
        for lo in range(start, end, segment):
            if policy == "reset":
                state = model.init_state(1)
            chunk = ids[lo:min(lo + segment, end)][None]
            out = model(chunk, state=state)
            if chunk.shape[1] > 1:
                nats += torch.nn.functional.cross_entropy(out.logits[0, :-1].float(), chunk[0, 1:], reduction="sum").item()
                scored += chunk.shape[1] - 1
            state = out.state
    return state, {"tokens": int(len(ids)), "documents": len(docs), "policy": policy,
                   "bits_per_token": nats / (scored * math.log(2)) if scored else float("nan")}
