"""Delta Gradient Descent (DGD) as the outer optimiser of a model's linear layers (NL-L §4.5, spec §3)."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from nestlearn.errors import check_choice
from nestlearn.optim._common import PerParamOptimizer, apply_update, check_nonneg, decoupled_weight_decay, param_label

FORMS = ("long", "neurips")


def dgd_update(weight: Tensor, grad: Tensor, input_moment: Tensor, lr: float, form: str) -> None:
    """One DGD step in place on ``weight`` (out × in), given C = mean x xᵀ of the layer's inputs.

    ``form="long"`` (Eq 57 with spec §3.2's correction, D1):
        W ← W − η' W C − η' ∇_W L,   η' = η / (1 + η tr C)
    For a single input x this is W(I − η' x xᵀ) − η' ∇_y L ⊗ x, the proximal delta-rule step
    W − η'(W x − u)xᵀ with u = −∇_y L; tr C = ‖x‖².
    ``form="neurips"`` (NL-N Eq 29, literal): W ← W − W C − η ∇_W L (no η', no normalisation).
    """
    if form == "long":
        step = lr / (1.0 + lr * float(torch.trace(input_moment)))
        decay = step
    else:
        step, decay = lr, 1.0
    weight.sub_(weight @ input_moment, alpha=decay).sub_(grad, alpha=step)


class _InputRecorder:
    """Forward hook that accumulates Σ x xᵀ and the row count of each managed linear weight's inputs.

    Entries are keyed by the weight's id. A deep copy of the model carries a copy of this hook
    whose keys match none of the copy's weights, so the copy's forwards are ignored.
    """

    def __init__(self, linears: Iterable[nn.Linear]) -> None:
        self.moments: dict[int, list[Any]] = {id(m.weight): [None, 0] for m in linears}

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        entry = self.moments.get(id(module.weight))
        if entry is None or not torch.is_grad_enabled():
            return
        rows = inputs[0].detach().reshape(-1, module.in_features)
        rows = rows.to(torch.promote_types(rows.dtype, torch.float32))  # bf16/fp16 inputs accumulate in float32
        moment = rows.mT @ rows
        entry[0] = moment if entry[0] is None else entry[0].add_(moment)
        entry[1] += rows.shape[0]


class DGD(PerParamOptimizer):
    """Delta Gradient Descent (NL-L Eqs 54–57; NL-N Eqs 25–29; D1) for the ``nn.Linear`` layers of a model.

    Associative-memory reading (spec §3): a linear layer y = W x is a memory that maps its inputs
    x (keys) to the negative gradient of the loss at its output, u = −∇_y L (its self-generated
    values). Plain GD optimises the dot-product objective ⟨W x, ∇_y L⟩; DGD replaces it by the L2
    regression ½‖W x − u‖² with the proximal term (1/2η)‖W − W_t‖² (Eq 56). The closed-form
    solution adds a data-dependent decay to the gradient step (Eq 57): the layer forgets what it
    stored along the directions of its current inputs. Frequency: once per optimiser step.
    Consequence: a fixed point satisfies W·C = −∇_W L rather than ∇_W L = 0, so the decay acts as
    a data-dependent weight decay and DGD settles at a shrunk solution, not at the minimiser of L.

    The decay needs each layer's input, which the gradient alone does not carry, so the optimiser
    registers a forward hook on every managed ``nn.Linear``; the user only wraps the model:
    ``opt = DGD(model, lr=0.01)``.

    Reduction of inputs with batch or sequence axes: the hook flattens every input to rows of
    size ``in_features`` and accumulates C = mean over all rows of x xᵀ (in float32, or float64 for
    float64 inputs), over every forward pass run with gradients enabled since the last
    ``zero_grad()`` or ``step()`` (forwards under ``torch.no_grad()``, e.g. evaluation, are ignored). This matches a loss that is
    a mean over those rows; for a single row it is Eq 57 exactly. ``tr C`` is the mean squared
    input norm, so η' = η/(1 + η·mean‖x‖²). A weight shared by several linear modules
    accumulates the rows of all of them.

    Parameters of the model that are not the weight of a managed ``nn.Linear`` (biases, norms,
    embeddings, …) are updated by plain gradient descent with the same lr, in a second param group
    (``group["rule"] == "sgd"``). Pass ``params`` to restrict which parameters this optimiser
    updates at all (for example to leave embeddings to another optimiser).

    Non-finite gradients: a gradient with one inf or NaN entry makes ``step`` raise
    :class:`~nestlearn.errors.NonFiniteGradientError` naming the parameter, before any parameter
    or state changes (the weight would keep it and pass it to every later output); skip the batch or lower the learning rate and step again.

    Args:
        model: the model; its ``nn.Linear`` modules are found with ``model.modules()``.
        lr: η >= 0.
        form: ``"long"`` (Eq 57 with η') or ``"neurips"`` (NL-N Eq 29, literal).
        weight_decay: decoupled decay W ← W(1 − lr·weight_decay), >= 0, on every parameter.
        params: optional subset of ``model``'s parameters to optimise; default all that require grad.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-2,
        form: str = "long",
        weight_decay: float = 0.0,
        params: Iterable[Tensor] | None = None,
    ) -> None:
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if params is not None:
            wanted = {id(p) for p in params}
            known = {id(p) for _, p in named}
            if not wanted <= known:
                raise ValueError("DGD: params contains tensors that are not trainable parameters of the model")
            named = [(name, p) for name, p in named if id(p) in wanted]
        chosen = {id(p) for _, p in named}
        linears = [m for m in model.modules() if isinstance(m, nn.Linear) and id(m.weight) in chosen]
        linear_ids = {id(m.weight) for m in linears}
        groups = [{"params": [(n, p) for n, p in named if id(p) in linear_ids], "rule": "dgd"},
                  {"params": [(n, p) for n, p in named if id(p) not in linear_ids], "rule": "sgd"}]
        defaults = dict(lr=lr, form=form, weight_decay=weight_decay)
        super().__init__([g for g in groups if g["params"]], defaults)
        self._recorder = _InputRecorder(linears)
        self._hooks = [m.register_forward_hook(self._recorder) for m in linears]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group after checking its hyper-parameters."""
        param_group.setdefault("rule", "sgd")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_nonneg("DGD.lr", group["lr"])
        check_choice("DGD.form", group["form"], FORMS)
        check_nonneg("DGD.weight_decay", group["weight_decay"])
        check_choice("DGD.rule", group["rule"], ("dgd", "sgd"))

    def _clear_inputs(self) -> None:
        for entry in self._recorder.moments.values():
            entry[0], entry[1] = None, 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear gradients and the captured layer inputs."""
        super().zero_grad(set_to_none)
        self._clear_inputs()

    def remove_hooks(self) -> None:
        """Detach the forward hooks from the model (the optimiser cannot step linear layers afterwards)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Apply one DGD step to the linear weights and one GD step to the rest; returns the closure's loss.

        With a closure, inputs captured before the call are discarded so that C comes from the
        closure's own forward pass.
        """
        if closure is not None:
            self._clear_inputs()
        loss = super().step(closure)
        self._clear_inputs()
        return loss

    def update(self, group: dict[str, Any], param: Tensor, state: dict[str, Any]) -> None:
        """A DGD step on a managed linear weight (``rule == "dgd"``), a GD step on anything else."""
        if group["rule"] == "sgd":
            apply_update(param, group, param.grad, -group["lr"])
            return
        moment, count = self._recorder.moments.get(id(param), (None, 0))
        if count == 0:
            raise RuntimeError(
                f"DGD: linear weight {param_label(group, param)} has a gradient but no input was "
                "captured; run the module's forward (not F.linear on its weight) with gradients enabled "
                "after zero_grad() and before step()")
        decoupled_weight_decay(param, group["lr"], group["weight_decay"])
        dgd_update(param, param.grad, (moment / count).to(param.dtype), group["lr"], group["form"])
