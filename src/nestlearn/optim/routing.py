"""Parameter routing (decisions.md D20) and the combined optimiser that steps several optimisers as one.

Matrix optimisers (Muon, M3, DMGD, DGD, …) are meant for hidden weight matrices. Everything else
goes to AdamW, following the Muon convention: embeddings, the LM head and anything tied to it,
norm gains, biases, convolution kernels, tensors with ndim ≠ 2 and 2-D tensors with a dimension
of 1.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from nestlearn.optim._common import PerParamOptimizer, check_finite_gradients, evaluate_closure, split_param_names

NO_MUON_ATTR = "_nestlearn_no_muon"
"""Set this attribute to True on a parameter (or on a module, for all its own parameters) to send
it to AdamW regardless of its shape. Prefer the module tag where it fits: ``copy.deepcopy`` of a
model keeps module attributes but drops Python attributes set on an ``nn.Parameter``."""

MATRIX = "matrix"
ADAMW = "adamw"

_NORM_TYPES: tuple[type, ...] = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm,
                                 nn.modules.batchnorm._NormBase)
_CONV_TYPES: tuple[type, ...] = (nn.modules.conv._ConvNd,)
_EMBEDDING_TYPES: tuple[type, ...] = (nn.Embedding, nn.EmbeddingBag)

# Reasons a parameter goes to AdamW, strongest first: a parameter that several modules share
# (a tied head) keeps the strongest reason any of them gives.
_MODULE_REASONS = ("tagged", "embedding", "lm_head", "norm", "conv", "bias")


@dataclass
class ParamRouting:
    """Result of :func:`route_parameters`.

    Attributes:
        matrix: ``(name, parameter)`` pairs for the matrix optimiser (hidden 2-D matrices).
        adamw: ``(name, parameter)`` pairs for AdamW.
        reasons: for every routed name, why it landed where it did: ``"hidden matrix"`` or one of
            ``"tagged"``, ``"embedding"``, ``"lm_head"``, ``"norm"``, ``"conv"``, ``"bias"``,
            ``"ndim != 2"``, ``"dimension of 1"``.
    """

    matrix: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    adamw: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)


def _head_modules(model: nn.Module, head: nn.Module | Iterable[nn.Module] | None) -> list[nn.Module]:
    heads: list[nn.Module] = []
    if isinstance(head, nn.Module):
        heads.append(head)
    elif head is not None:
        heads.extend(head)
    get_output = getattr(model, "get_output_embeddings", None)
    if callable(get_output):
        found = get_output()
        if isinstance(found, nn.Module):
            heads.append(found)
    return heads


def _module_reason(module: nn.Module, attr: str, param: Tensor, head_ids: set[int]) -> str | None:
    if getattr(param, NO_MUON_ATTR, False) or getattr(module, NO_MUON_ATTR, False):
        return "tagged"
    if isinstance(module, _EMBEDDING_TYPES):
        return "embedding"
    if id(module) in head_ids:
        return "lm_head"
    if isinstance(module, _NORM_TYPES):
        return "norm"
    if isinstance(module, _CONV_TYPES):
        return "conv"
    if attr == "bias":
        return "bias"
    return None


def route_parameters(model: nn.Module, head: nn.Module | Iterable[nn.Module] | None = None) -> ParamRouting:
    """Split ``model``'s trainable parameters into a matrix group and an AdamW group (D20).

    A parameter goes to AdamW when any module that holds it is an embedding (``nn.Embedding``,
    ``nn.EmbeddingBag``), the LM head, a norm layer or a convolution, when it is registered as
    ``bias``, when it or its module carries ``_nestlearn_no_muon = True``, when its ndim ≠ 2, or
    when it is 2-D with a dimension of 1. Everything else (2-D hidden matrices, including raw
    ``nn.Parameter`` matrices such as memory initial states) goes to the matrix group.

    The LM head is ``head`` (a module or modules) plus ``model.get_output_embeddings()`` when the
    model defines it. A head tied to an embedding is the same tensor and is caught by the
    embedding rule; an untied head that is neither passed nor tagged is an ordinary ``nn.Linear``
    and would be routed as a hidden matrix, so models should tag it.

    Parameters with ``requires_grad=False`` are left out. Names are those of
    ``model.named_parameters()`` (a shared tensor appears once, under its first name).
    """
    head_ids = {id(m) for m in _head_modules(model, head)}
    strongest: dict[int, str] = {}
    for module in model.modules():
        for attr, param in module.named_parameters(recurse=False):
            reason = _module_reason(module, attr, param, head_ids)
            if reason is None:
                continue
            previous = strongest.get(id(param))
            if previous is None or _MODULE_REASONS.index(reason) < _MODULE_REASONS.index(previous):
                strongest[id(param)] = reason
    routing = ParamRouting()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        reason = strongest.get(id(param))
        if reason is None and param.ndim != 2:
            reason = "ndim != 2"
        if reason is None and min(param.shape) < 2:
            reason = "dimension of 1"
        if reason is None:
            routing.matrix.append((name, param))
            routing.reasons[name] = "hidden matrix"
        else:
            routing.adamw.append((name, param))
            routing.reasons[name] = reason
    return routing


def adamw_groups(named: Sequence[tuple[str, nn.Parameter]], reasons: Mapping[str, str],
                 weight_decay: float) -> list[dict[str, Any]]:
    """Param groups for AdamW: weight decay on tensors with ndim >= 2 except embeddings, none elsewhere.

    So norms, biases, scalars and embeddings (with any head tied to them) are not decayed; hidden
    matrices, untied heads and convolution kernels are. Empty groups are dropped. The groups keep
    the names in the form the installed torch accepts (:func:`~nestlearn.optim._common.split_param_names`).
    """
    def decayed(name: str, param: Tensor) -> bool:
        return param.ndim >= 2 and reasons.get(name) != "embedding"

    decay = [(n, p) for n, p in named if decayed(n, p)]
    no_decay = [(n, p) for n, p in named if not decayed(n, p)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [split_param_names(g) for g in groups if g["params"]]


class _MergedState(Mapping):
    """Read-only view of several optimisers' ``state`` mappings (lookups never create entries)."""

    def __init__(self, optimizers: Sequence[Optimizer]) -> None:
        self._optimizers = optimizers

    def __getitem__(self, key: Tensor) -> Any:
        for optimizer in self._optimizers:
            if key in optimizer.state:
                return optimizer.state[key]
        raise KeyError(key)

    def __iter__(self) -> Iterator[Tensor]:
        for optimizer in self._optimizers:
            yield from optimizer.state

    def __len__(self) -> int:
        return sum(len(optimizer.state) for optimizer in self._optimizers)


class CombinedOptimizer(Optimizer):
    """Several optimisers over disjoint parameters, driven as one ``torch.optim.Optimizer``.

    ``param_groups`` is the concatenation of the children's groups (the same dict objects), so
    learning-rate schedulers such as ``torch.optim.lr_scheduler.LambdaLR`` and gradient clipping by
    group work unchanged and act on every child. ``step(closure)`` evaluates the closure once and
    then steps every child; ``zero_grad`` clears every child (DGD also drops its captured inputs);
    ``state_dict`` holds one entry per child, in order; ``state`` is a read-only merged view.

    New groups must be added to a child optimiser (``combined.optimizers[i].add_param_group``),
    which makes them visible here only after re-wrapping.
    """

    def __init__(self, optimizers: Sequence[Optimizer]) -> None:
        optimizers = list(optimizers)
        if not optimizers:
            raise ValueError("CombinedOptimizer needs at least one optimizer")
        self._ready = False
        placeholders = [{"params": list(g["params"])} for o in optimizers for g in o.param_groups]
        super().__init__(placeholders, {})
        self.optimizers = optimizers
        self.param_groups = [g for o in optimizers for g in o.param_groups]
        self.state = _MergedState(optimizers)
        self._ready = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Only used while wrapping (it checks the children's parameters are disjoint)."""
        if self._ready:
            raise NotImplementedError("add the group to one of CombinedOptimizer.optimizers instead")
        super().add_param_group(param_group)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "optimizers": self.optimizers, "_ready": self._ready}

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate ``closure`` (if given) once, then step every child; returns the closure's loss.

        The nestlearn children's gradients are checked first, so a refused step
        (:class:`~nestlearn.errors.NonFiniteGradientError`) leaves every child untouched, AdamW included.
        """
        loss = evaluate_closure(closure)
        for optimizer in self.optimizers:
            if isinstance(optimizer, PerParamOptimizer):
                check_finite_gradients(type(optimizer).__name__, optimizer.param_groups)
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of every child."""
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """``{"optimizers": [child.state_dict(), …]}``."""
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a dict written by :meth:`state_dict` of a combined optimiser with the same children."""
        states = state_dict.get("optimizers") if isinstance(state_dict, dict) else None
        if not isinstance(states, list) or len(states) != len(self.optimizers):
            count = len(states) if isinstance(states, list) else "no"
            raise ValueError(f"CombinedOptimizer: state_dict has {count} optimizer states, "
                             f"expected {len(self.optimizers)}")
        for optimizer, state in zip(self.optimizers, states):
            optimizer.load_state_dict(state)
        # Loading replaces each child's group dicts, so the concatenated view must be rebuilt.
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]
