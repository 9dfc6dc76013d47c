"""Train and score any nestlearn language model on a synthetic task (``nestlearn.data.synthetic``).

A :class:`~nestlearn.data.synthetic.base.TaskBatch` is next-token shaped: the model reads ``inputs``
and is scored where ``targets`` is not -100. A task model is a :class:`CausalLM` whose vocabulary
covers both the input ids and the target classes; its logits are restricted to the first
``num_classes`` ids, so one model family serves every task and every baseline trains the same way.

Set-valued tasks (formal-language recognition, tasks.md §4: ``target_sets`` holds the symbols that
may come next) read the same logits as K independent sigmoids, trained with binary cross-entropy
and scored as string accuracy: a string counts only when every position's set is right.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from nestlearn.data.synthetic.base import IGNORE_INDEX, TaskBatch
from nestlearn.eval.metrics import recognition_accuracy
from nestlearn.models.lm import CausalLM, LMConfig, replace_config


def task_model(config: LMConfig, batch: TaskBatch) -> CausalLM:
    """A model of ``config``'s family sized for the task: vocabulary max(input ids, classes)."""
    vocab = max(batch.vocab_size, batch.num_classes)
    return CausalLM(replace_config(config, vocab_size=vocab, max_seq_len=max(config.max_seq_len, batch.inputs.shape[1])))


def task_logits(model: CausalLM, batch: TaskBatch) -> torch.Tensor:
    """(B, T, num_classes) class scores at every position."""
    device = next(model.parameters()).device
    return model(batch.inputs.to(device)).logits[..., : batch.num_classes]


def task_loss(model: CausalLM, batch: TaskBatch) -> torch.Tensor:
    """Mean cross-entropy over the scored positions."""
    logits = task_logits(model, batch)
    targets = batch.targets.to(logits.device)
    if batch.target_sets is not None:
        mask = targets != IGNORE_INDEX
        return F.binary_cross_entropy_with_logits(logits.float()[mask], batch.target_sets.to(logits.device)[mask].float())
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


@torch.no_grad()
def task_accuracy(model: CausalLM, batch: TaskBatch) -> float:
    """Fraction of scored positions predicted exactly (greedy argmax); for set-valued tasks, of strings."""
    was_training = model.training
    model.eval()
    logits = task_logits(model, batch).cpu()
    model.train(was_training)
    if batch.target_sets is not None:
        return recognition_accuracy(logits, batch.targets)
    predictions = logits.argmax(-1)
    mask = batch.targets != IGNORE_INDEX
    return (predictions[mask] == batch.targets[mask]).float().mean().item()


def fit_task(model: CausalLM, sample: Callable[[int], TaskBatch], steps: int, lr: float = 3e-3,
             weight_decay: float = 0.0) -> list[float]:
    """Train on a fresh batch ``sample(step)`` at every step with AdamW; returns the losses."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    model.train()
    for step in range(steps):
        loss = task_loss(model, sample(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
