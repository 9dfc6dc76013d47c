"""In-context class-incremental learning (issue 6, benchmark b): tasks arrive one after another in one context.

A stream presents T tasks in order. Task t is a set of ``pairs_per_task`` key → label associations
whose labels come from task t's own ``classes_per_task`` classes (classes t·c … t·c + c − 1), so
each task brings new classes, as in Class-IL (tasks.md §9.2): there is no task identity anywhere,
and a query must be answered over every class seen so far. Keys are fresh random tokens in every
stream, so nothing can be memorised in the weights; the associations exist only in the context.

Token layout (ids): labels ``[0, T·c)``, keys ``[T·c, T·c + num_keys)``, one query marker last.

    presentation of task t:  k₁ l₁ k₂ l₂ …            (2 · pairs_per_task tokens)
    query on task j:         QUERY k₁ k₂ …            (scored at every key: its label)

The accuracy matrix (tasks.md §9.1): R[i, j] is the query accuracy on task j's keys after the
stream has presented tasks 1 … i; b_j is the accuracy with nothing presented. The model reads the
presentation once, keeps its fast state (a KV cache for attention, memory weights for the
recurrent families), and every query continues from a copy of that state through the stateful
``CausalLM.forward(tokens, state)``; R[i, j] for j > i queries keys not yet shown. FWT is "n/a"
(Class-IL with unseen classes). Models are first meta-trained on random streams of the same form,
with 1 … T tasks presented and queries on any presented task.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nestlearn.config import from_dict
from nestlearn.data.synthetic.base import IGNORE_INDEX, TaskBatch, derive_seed, make_rng
from nestlearn.errors import ConfigError, check_positive
from nestlearn.eval.continual.metrics import continual_summary
from nestlearn.eval.tasks import task_model
from nestlearn.models.lm import CausalLM, LMState, families

FAMILIES = ("transformer", "titans", "gated_deltanet", "hope", "hope_attention")


@dataclass
class ICLSpec:
    """Attributes:
        num_tasks: T, tasks per stream.
        pairs_per_task: associations per task.
        classes_per_task: c, new classes per task.
        num_keys: size of the key vocabulary (keys of a stream are distinct).
    """

    num_tasks: int = 4
    pairs_per_task: int = 3
    classes_per_task: int = 2
    num_keys: int = 48

    def validate(self) -> None:
        check_positive("num_tasks", self.num_tasks)
        check_positive("pairs_per_task", self.pairs_per_task)
        check_positive("classes_per_task", self.classes_per_task)
        if self.num_keys < self.num_tasks * self.pairs_per_task:
            raise ConfigError("num_keys", f"must be >= num_tasks * pairs_per_task = "
                              f"{self.num_tasks * self.pairs_per_task} (keys of a stream are distinct), got {self.num_keys}")

    @property
    def num_classes(self) -> int:
        return self.num_tasks * self.classes_per_task

    @property
    def query_token(self) -> int:
        return self.num_classes + self.num_keys

    @property
    def vocab_size(self) -> int:
        return self.query_token + 1

    @property
    def max_len(self) -> int:
        """Longest training row: all tasks presented, then a query."""
        return 2 * self.num_tasks * self.pairs_per_task + 1 + self.pairs_per_task


@dataclass
class Streams:
    """n streams: keys (n, T, P) token ids and labels (n, T, P) class ids."""

    keys: torch.Tensor
    labels: torch.Tensor

    def presentation(self, upto: int) -> torch.Tensor:
        """(n, 2·P·upto) tokens presenting tasks 0 … upto−1 in order."""
        pairs = torch.stack([self.keys[:, :upto], self.labels[:, :upto]], dim=-1)
        return pairs.reshape(len(self.keys), -1)

    def query(self, spec: ICLSpec, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (n, 1 + P): QUERY then task ``task``'s keys, targets their labels."""
        n = len(self.keys)
        marker = torch.full((n, 1), spec.query_token, dtype=torch.long)
        inputs = torch.cat([marker, self.keys[:, task]], dim=1)
        targets = torch.cat([torch.full((n, 1), IGNORE_INDEX, dtype=torch.long), self.labels[:, task]], dim=1)
        return inputs, targets


def sample_streams(spec: ICLSpec, n: int, seed: int) -> Streams:
    """n independent streams: distinct random keys, labels uniform over each task's own classes."""
    spec.validate()
    rng = make_rng(seed)
    T, P, c = spec.num_tasks, spec.pairs_per_task, spec.classes_per_task
    keys = np.argsort(rng.random((n, spec.num_keys)), axis=1)[:, : T * P].reshape(n, T, P) + spec.num_classes
    labels = rng.integers(0, c, size=(n, T, P)) + c * np.arange(T)[None, :, None]
    return Streams(torch.from_numpy(keys).long(), torch.from_numpy(labels).long())


def training_batch(spec: ICLSpec, n: int, seed: int) -> TaskBatch:
    """Meta-training rows: 1 … T tasks presented (one count per batch), then P queries on presented keys."""
    rng = make_rng(seed)
    streams = sample_streams(spec, n, derive_seed(seed, "streams"))
    upto = int(rng.integers(1, spec.num_tasks + 1))
    P = spec.pairs_per_task
    flat_keys = streams.keys[:, :upto].reshape(n, -1)
    flat_labels = streams.labels[:, :upto].reshape(n, -1)
    pick = torch.from_numpy(np.argsort(rng.random((n, upto * P)), axis=1)[:, :P])
    marker = torch.full((n, 1), spec.query_token, dtype=torch.long)
    inputs = torch.cat([streams.presentation(upto), marker, flat_keys.gather(1, pick)], dim=1)
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[:, -P:] = flat_labels.gather(1, pick)
    return TaskBatch(inputs, targets, spec.vocab_size, spec.num_classes, meta={"tasks_presented": upto})


@torch.no_grad()
def _query_accuracy(model: CausalLM, spec: ICLSpec, streams: Streams, task: int, state: LMState | None) -> float:
    inputs, targets = streams.query(spec, task)
    logits = model(inputs, state=state, keep_state=False).logits[..., : spec.num_classes]
    mask = targets != IGNORE_INDEX
    return (logits.argmax(-1)[mask] == targets[mask]).double().mean().item()


@torch.no_grad()
def accuracy_matrix(model: CausalLM, spec: ICLSpec, streams: Streams) -> tuple[np.ndarray, np.ndarray]:
    """R (T, T) and b (T,) of the module docstring; each query continues the presentation's state."""
    was = model.training
    model.eval()
    T = spec.num_tasks
    b = np.array([_query_accuracy(model, spec, streams, j, None) for j in range(T)])
    R = np.empty((T, T))
    for i in range(T):
        state = model(streams.presentation(i + 1)).state
        R[i] = [_query_accuracy(model, spec, streams, j, state) for j in range(T)]
    model.train(was)
    return R, b


def meta_train(model: CausalLM, spec: ICLSpec, steps: int, batch_size: int, lr: float, seed: int) -> list[float]:
    """AdamW on fresh :func:`training_batch` rows (cosine decay, 10 % warm-up); returns the losses."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(s / steps, 1.0))))
    train_seed = derive_seed(seed, "icl-train")
    model.train()
    losses = []
    for step in range(steps):
        batch = training_batch(spec, batch_size, train_seed + step)
        logits = model(batch.inputs, keep_state=False).logits[..., : spec.num_classes]
        loss = F.cross_entropy(logits.float().reshape(-1, spec.num_classes), batch.targets.reshape(-1),
                               ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


@dataclass
class ICLSettings:
    """Attributes:
        spec: the stream.
        families: model families compared.
        d_model, n_layers: every family's size (other fields at their defaults, but chunk sizes
            scaled to the stream length, see :func:`family_config`).
        steps, batch_size, lr: meta-training.
        test_streams: streams scored.
    """

    spec: ICLSpec
    families: tuple[str, ...] = FAMILIES
    d_model: int = 32
    n_layers: int = 2
    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    test_streams: int = 256


def family_config(name: str, d_model: int, n_layers: int, max_len: int):
    """The family's config at this size; recurrent chunk sizes shrunk to fit a stream of ``max_len`` tokens.

    Defaults sized for long training sequences (memory chunks of 16–64, CMS levels every 512/128/32
    tokens) would never write inside a stream of a few dozen tokens, which is no test of in-context
    learning; so memories write every 4 tokens and CMS levels every 16 / 8 / 4 [Interp].
    """
    registry = families()
    if name not in registry:
        raise ConfigError("families", f"unknown family {name!r}; allowed: {', '.join(sorted(registry))}")
    fields = {"d_model": d_model, "n_layers": n_layers, "max_seq_len": max_len}
    cls = registry[name]
    names = {f.name for f in dataclasses.fields(cls)}
    if "chunk_size" in names:
        fields["chunk_size"] = 4
    if "cms" in names:
        fields["cms"] = {"chunk_sizes": [16, 8, 4]}
    if "selfmod" in names:
        fields["selfmod"] = {"chunk_size_memory": 4, "chunk_size_other": 8}
    return from_dict(cls, fields, prefix="model")


def run_icl(settings: ICLSettings, seed: int = 0) -> dict[str, object]:
    """Meta-train every family and score its accuracy matrix on the same test streams."""
    spec = settings.spec
    spec.validate()
    tests = sample_streams(spec, settings.test_streams, derive_seed(seed, "icl-test"))
    out: dict[str, object] = {"spec": asdict(spec), "settings": {k: v for k, v in asdict(settings).items() if k != "spec"},
                              "seed": seed, "scenario": "Class-IL (in context)", "families": {}}
    for name in settings.families:
        torch.manual_seed(seed)
        probe = training_batch(spec, 1, 0)
        model = task_model(family_config(name, settings.d_model, settings.n_layers, spec.max_len), probe)
        t0 = time.perf_counter()
        losses = meta_train(model, spec, settings.steps, settings.batch_size, settings.lr, seed)
        seconds = time.perf_counter() - t0
        R, b = accuracy_matrix(model, spec, tests)
        out["families"][name] = {**continual_summary(R, None), "b": b.tolist(), "train_seconds": seconds,
                                 "final_loss": float(np.mean(losses[-20:])),
                                 "parameters": model.num_parameters(non_embedding=False)}
    return out


def chance_levels(spec: ICLSpec) -> Sequence[float]:
    """Accuracy of a guess uniform over the classes seen after each task: 1/(c·i)."""
    return [1.0 / (spec.classes_per_task * (i + 1)) for i in range(spec.num_tasks)]
