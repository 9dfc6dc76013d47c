"""Parameters the outer optimiser updates only every p-th step (the ``optimizer`` CMS signal, D13, D16).

A module tagged with :data:`STEP_PERIOD_ATTR` = p (a CMS level under ``cms.signal = "optimizer"``)
asks that its parameters change once every p optimiser steps: their gradients are summed over the
p steps (Eq 71 sums the error terms of a chunk), then the wrapped optimiser applies one step with
that sum and the buffer is cleared. On the other steps the wrapped optimiser sees ``grad = None``
for them, which every ``torch.optim`` optimiser and every :mod:`nestlearn.optim` optimiser skips,
so their optimiser state (moments, step counts, decay) moves only on their own steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from nestlearn.optim._common import evaluate_closure

STEP_PERIOD_ATTR = "_nestlearn_step_period"
"""Set this attribute to an int p >= 1 on a module: all its parameters (recursively) are stepped
every p-th optimiser step with their gradients summed in between. A module tag, not a parameter tag,
so that ``copy.deepcopy`` of a model keeps it."""


def periodic_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter, int]]:
    """``(name, parameter, period)`` of every trainable parameter under a tagged module with period > 1.

    Names and order follow ``model.named_parameters()``. A parameter under two tagged modules takes
    the innermost tag (``model.modules()`` visits parents first).
    """
    periods: dict[int, int] = {}
    for module in model.modules():
        period = getattr(module, STEP_PERIOD_ATTR, None)
        if period is None:
            continue
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(f"{STEP_PERIOD_ATTR} must be an int >= 1, got {period!r} on {type(module).__name__}")
        for param in module.parameters():
            periods[id(param)] = period
    return [(name, p, periods[id(p)]) for name, p in model.named_parameters()
            if p.requires_grad and periods.get(id(p), 1) > 1]


class PeriodicOptimizer(Optimizer):
    """Wraps an optimiser so that some parameters are stepped only every p-th call of :meth:`step`.

    ``param_groups`` and ``state`` are the wrapped optimiser's (the same objects), so learning-rate
    schedulers and gradient clipping act unchanged. On step n (1-based) a parameter with period p
    adds its gradient to its buffer; if p divides n the wrapped optimiser steps it with the buffer,
    which is then cleared; otherwise it sees ``grad = None``. Every parameter's ``.grad`` is
    restored after the step. ``state_dict`` holds the wrapped optimiser's state, the step clock and
    the buffers, so a resumed run continues exactly.

    Args:
        optimizer: the optimiser over all parameters, the periodic ones included.
        periodic: ``(name, parameter, period)`` triples (see :func:`periodic_parameters`).
    """

    def __init__(self, optimizer: Optimizer, periodic: Sequence[tuple[str, Tensor, int]]) -> None:
        owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
        for name, param, period in periodic:
            if id(param) not in owned:
                raise ValueError(f"PeriodicOptimizer: parameter {name!r} is not optimised by the wrapped optimizer")
            if isinstance(period, bool) or not isinstance(period, int) or period < 1:
                raise ValueError(f"PeriodicOptimizer: period of {name!r} must be an int >= 1, got {period!r}")
        self._ready = False
        super().__init__([{"params": list(g["params"])} for g in optimizer.param_groups], {})
        self.optimizer = optimizer
        self.param_groups = optimizer.param_groups
        self.state = optimizer.state
        self.names = [name for name, _, _ in periodic]
        self.params = [param for _, param, _ in periodic]
        self.periods = [period for _, _, period in periodic]
        self.clock = 0
        self.buffers: list[Tensor | None] = [None] * len(self.params)
        self._ready = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Only used while wrapping; add groups to the wrapped optimiser before wrapping it."""
        if self._ready:
            raise NotImplementedError("add the group to PeriodicOptimizer.optimizer before wrapping it")
        super().add_param_group(param_group)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "optimizer": self.optimizer, "names": self.names, "params": self.params,
                "periods": self.periods, "clock": self.clock, "buffers": self.buffers, "_ready": self._ready}

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate ``closure`` (if given), accumulate, then step the wrapped optimiser once."""
        loss = evaluate_closure(closure)
        self.clock += 1
        held = [param.grad for param in self.params]
        for i, (param, period) in enumerate(zip(self.params, self.periods)):
            if param.grad is not None:
                self.buffers[i] = param.grad.clone() if self.buffers[i] is None else self.buffers[i].add_(param.grad)
            if self.clock % period == 0:
                param.grad, self.buffers[i] = self.buffers[i], None
            else:
                param.grad = None
        try:
            self.optimizer.step()
        finally:
            for param, grad in zip(self.params, held):
                param.grad = grad
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients (not the accumulation buffers)."""
        self.optimizer.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """``{"optimizer": wrapped state, "periodic": {"clock", "names", "periods", "buffers"}}``."""
        return {"optimizer": self.optimizer.state_dict(),
                "periodic": {"clock": self.clock, "names": list(self.names), "periods": list(self.periods),
                             "buffers": [None if b is None else b.clone() for b in self.buffers]}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a dict written by :meth:`state_dict` of a wrapper over the same parameters and periods."""
        periodic = state_dict.get("periodic") if isinstance(state_dict, dict) else None
        if periodic is None:
            raise ValueError("PeriodicOptimizer: state_dict has no 'periodic' entry (saved without step periods?)")
        if list(periodic["names"]) != self.names or list(periodic["periods"]) != self.periods:
            raise ValueError(f"PeriodicOptimizer: state_dict is for parameters {periodic['names']} with periods "
                             f"{periodic['periods']}, this optimizer has {self.names} with {self.periods}")
        buffers = list(periodic["buffers"])
        if len(buffers) != len(self.params):
            raise ValueError(f"PeriodicOptimizer: state_dict has {len(buffers)} buffers, expected {len(self.params)}")
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.clock = int(periodic["clock"])
        self.buffers = [None if b is None else b.to(device=p.device, dtype=p.dtype).clone()
                        for b, p in zip(buffers, self.params)]
        # Loading replaces the wrapped optimiser's group dicts (and a torch optimiser's state), so re-share them.
        self.param_groups = self.optimizer.param_groups
        self.state = self.optimizer.state
