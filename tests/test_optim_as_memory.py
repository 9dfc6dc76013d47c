"""Optimizers as associative memories: their updates equal the memory primitive's with the same inputs.

NL-L §4 reads an optimiser as a memory that compresses gradients. These tests pin that reading to
:mod:`nestlearn.memory`: one optimiser step equals one write of a :class:`MemorySpec` memory.
"""

import torch
from torch import nn

from nestlearn.memory import MemorySpec, init_memory_state, memory_scan
from nestlearn.optim import DGD, DeltaMomentum

DT = torch.float64


def _write(spec: MemorySpec, weight: torch.Tensor, key: torch.Tensor, value: torch.Tensor, eta: float,
           alpha: float | None = None) -> torch.Tensor:
    """One token written into a linear memory holding ``weight`` (out × in); returns the new weight."""
    state = init_memory_state(spec, {"W": weight}, 1)
    gates = dict(eta=torch.full((1, 1), eta, dtype=DT),
                 alpha=None if alpha is None else torch.full((1, 1), alpha, dtype=DT))
    _, new = memory_scan(spec, state, key.view(1, 1, -1), key.view(1, 1, -1), value.view(1, 1, -1), **gates)
    return new["W"][0]


def test_dgd_step_is_a_delta_rule_write_of_the_layer_memory():
    """DGD on y = W x is the linear memory W with key x and value −∇_y L, written by the delta rule
    with the implicit step η/(1 + η‖x‖²) (Eq 57): the ``dgd`` rule of the primitive."""
    torch.manual_seed(0)
    layer = nn.Linear(5, 3, bias=False).to(DT)
    x = torch.randn(1, 5, dtype=DT)
    target = torch.randn(1, 3, dtype=DT)
    w0 = layer.weight.detach().clone()
    opt = DGD(layer, lr=0.3)  # before the forward: its hook records the layer's input
    y = layer(x)
    loss = 0.5 * (y - target).pow(2).sum()
    (grad_y,) = torch.autograd.grad(loss, y, retain_graph=True)
    loss.backward()
    opt.step()
    spec = MemorySpec(kind="linear", objective="dot", rule="dgd", chunk_size=1, step_norm="implicit")
    expected = _write(spec, w0, x[0], -grad_y[0], eta=0.3)
    torch.testing.assert_close(layer.weight.detach(), expected, rtol=0, atol=1e-12)


def test_delta_momentum_is_a_delta_rule_memory_of_the_gradient():
    """Delta momentum m ← m(αI − η_m ĝᵀĝ) − η g (Eq 49) for a one-row parameter is the linear memory m
    with key ĝ = g/‖g‖, retention α and the delta rule at step η_m; its value −η‖g‖/η_m makes the
    gradient term η g. Plain momentum is the same memory with η_m = 0."""
    torch.manual_seed(1)
    param = nn.Parameter(torch.randn(1, 6, dtype=DT))
    m0 = torch.randn(1, 6, dtype=DT)
    grad = torch.randn(1, 6, dtype=DT)
    lr, momentum, eta_m = 0.05, 0.9, 0.7
    opt = DeltaMomentum([param], lr=lr, momentum=momentum, eta_m=eta_m)
    param.grad = grad.clone()
    opt.state[param]["momentum_buffer"] = m0.clone()
    before = param.detach().clone()
    opt.step()
    m1 = param.detach() - before  # W ← W + m
    spec = MemorySpec(kind="linear", objective="dot", rule="dgd", chunk_size=1)
    norm = grad.norm()
    expected = _write(spec, m0, grad[0] / norm, (-lr * norm / eta_m).view(1), eta=eta_m, alpha=momentum)
    torch.testing.assert_close(m1, expected, rtol=0, atol=1e-12)
