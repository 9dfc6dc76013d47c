"""Train and score any nestlearn language model on a synthetic task (``nestlearn.data.synthetic``).

A :class:`~nestlearn.data.synthetic.base.TaskBatch` is next-token shaped: the model reads ``inputs``
and is scored where ``targets`` is not -100. A task model is a :class:`CausalLM` whose vocabulary
covers both the input ids and the target classes; its logits are restricted to the first
``num_classes`` ids, so one model family serves every task and every baseline trains the same way.

Set-valued tasks (formal-language recognition, tasks.md §4: ``target_sets`` holds the symbols that
may come next) read the same logits as K independent sigmoids, trained with binary cross-entropy
and scored as string accuracy: a string counts only when every position's set is right.

Reconstruction tasks (``meta["reconstruct"]``, MAD's compression, tasks.md §8) get a
:class:`~nestlearn.eval.compression.CompressionModel` instead: the family's model as an encoder read
at the last token, and a decoder that rebuilds every position from that one state.
"""

from __future__ import annotations

import math

from collections.abc import Callable

import torch
import torch.nn.functional as F

from nestlearn.data.synthetic.base import IGNORE_INDEX, TaskBatch
from nestlearn.eval.compression import CompressionModel
from nestlearn.eval.metrics import recognition_accuracy
from nestlearn.models.lm import CausalLM, LMConfig, replace_config


def task_model(config: LMConfig, batch: TaskBatch) -> CausalLM | CompressionModel:
    """A model of ``config``'s family sized for the task: vocabulary max(input ids, classes); wrapped
    as an encoder in a :class:`CompressionModel` for reconstruction tasks."""
    vocab = max(batch.vocab_size, batch.num_classes)
    model = CausalLM(replace_config(config, vocab_size=vocab, max_seq_len=max(config.max_seq_len, batch.inputs.shape[1])))
    return CompressionModel(model, batch.num_classes) if batch.meta.get("reconstruct") else model


def task_logits(model: CausalLM, batch: TaskBatch) -> torch.Tensor:
    """(B, T, num_classes) class scores at every position."""
    device = next(model.parameters()).device
    return model(batch.inputs.to(device), keep_state=False).logits[..., : batch.num_classes]


def labelled_logits(model: CausalLM | CompressionModel, batch: TaskBatch) -> torch.Tensor:
    """(N, num_classes) class scores at the N labelled positions only, in row-major order.

    The output head is applied to the labelled positions alone (tasks.md §0, §10): at a large
    vocabulary (MQAR's 8192) the full (B, T, V) logits cost several times the rest of the model.
    The same computation as :meth:`CausalLM.forward` from a fresh state otherwise.
    """
    device = next(model.parameters()).device
    tokens = batch.inputs.to(device)
    if isinstance(model, CompressionModel):
        return model(tokens)[batch.targets.to(device) != IGNORE_INDEX]
    if model.config.bounded_context and tokens.shape[1] > model.config.max_seq_len:
        return task_logits(model, batch)[batch.targets.to(device) != IGNORE_INDEX]  # forward raises the error
    x = model.embed(tokens)
    for blk in model.blocks:
        x, _ = blk(x, None, 0)
    hidden = x[batch.targets.to(device) != IGNORE_INDEX]
    return F.linear(model.norm(hidden), model.head_weight[: batch.num_classes])


def task_loss(model: CausalLM | CompressionModel, batch: TaskBatch) -> torch.Tensor:
    """Mean cross-entropy over the scored positions."""
    if batch.target_sets is not None:
        logits = task_logits(model, batch)
        targets = batch.targets.to(logits.device)
        mask = targets != IGNORE_INDEX
        return F.binary_cross_entropy_with_logits(logits.float()[mask], batch.target_sets.to(logits.device)[mask].float())
    logits = labelled_logits(model, batch)
    targets = batch.targets.to(logits.device)
    return F.cross_entropy(logits.float(), targets[targets != IGNORE_INDEX])


@torch.no_grad()
def task_accuracy(model: CausalLM | CompressionModel, batch: TaskBatch) -> float:
    """Fraction of scored positions predicted exactly (greedy argmax); for set-valued tasks, of strings."""
    was_training = model.training
    model.eval()
    try:
        if batch.target_sets is not None:
            return recognition_accuracy(task_logits(model, batch).cpu(), batch.targets)
        predictions = labelled_logits(model, batch).argmax(-1).cpu()
    finally:
        model.train(was_training)
    return (predictions == batch.targets[batch.targets != IGNORE_INDEX]).float().mean().item()


def fit_task(model: CausalLM | CompressionModel, sample: Callable[[int], TaskBatch], steps: int, lr: float = 3e-3,
             weight_decay: float = 0.0, clip: float | None = None,
             stop: Callable[[int, float], bool] | None = None) -> list[float]:
    """Train on a fresh batch ``sample(step)`` at every step with AdamW; returns the losses.

    Args:
        clip: clip the gradients' global norm to this value (None: no clipping).
        stop: called as ``stop(step, loss)`` after every step; returning True ends training early
            (e.g. once the training accuracy reaches 100 %, tasks.md §4).

    A step whose loss or gradient is not finite is skipped and returned as NaN, so one diverging
    batch does not turn every weight into NaN and callers can count the skipped steps. (The gradient
    can be non-finite under a finite loss: activations that overflow at positions outside the loss
    get zero gradients, and zero times inf is NaN in the weight gradients.)
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    losses = []
    model.train()
    for step in range(steps):
        loss = task_loss(model, sample(step))
        opt.zero_grad(set_to_none=True)
        value = loss.item()
        if math.isfinite(value):
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, math.inf if clip is None else clip)
            if torch.isfinite(norm):
                opt.step()
            else:
                value = math.nan
        losses.append(value)
        if stop is not None and stop(step, losses[-1]):
            break
    return losses
