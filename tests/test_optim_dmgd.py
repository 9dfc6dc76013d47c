"""Deep Momentum GD (NL-L Eq 50/52, decisions.md D21)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nestlearn.errors import ConfigError
from nestlearn.optim import DMGD, newton_schulz
from nestlearn.optim.dmgd import memory_grads, memory_read




def _grad(shape=(6, 9), seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_first_step_matches_the_formula():
    lr, alpha, eta_m = 0.1, 0.9, 0.7
    g = _grad()
    p = nn.Parameter(torch.zeros(6, 9))
    opt = DMGD([p], lr=lr, momentum=alpha, memory_lr=eta_m, hidden=4)
    p.grad = g.clone()
    opt.step()
    state = opt.state[p]
    # W_out starts at zero, so the first write leaves W_in at α·W_in0 and sets W_out from the
    # error −U: W_out1 = η_m Uᵀ tanh(U W_in0ᵀ).
    w_in0 = state["w_in"] / alpha
    u = g / torch.linalg.matrix_norm(g)
    w_out1 = eta_m * u.T @ torch.tanh(u @ w_in0.T)
    torch.testing.assert_close(state["w_out"], w_out1)
    assert state["w_in"].shape == (4, 9) and state["w_out"].shape == (9, 4)
    recalled = torch.tanh(u @ state["w_in"].T) @ w_out1.T
    torch.testing.assert_close(p.detach(), -lr * torch.linalg.matrix_norm(g) * recalled)


def test_memory_is_applied_row_wise():
    # Permuting the rows of every gradient permutes the update's rows: each row is one sample.
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(3))
    p, q = nn.Parameter(torch.zeros(6, 9)), nn.Parameter(torch.zeros(6, 9))
    opt_p, opt_q = DMGD([p], lr=0.1), DMGD([q], lr=0.1)
    for seed in range(3):
        g = _grad(seed=seed)
        p.grad, q.grad = g.clone(), g[perm].clone()
        opt_p.step()
        opt_q.step()
    torch.testing.assert_close(q.detach(), p.detach()[perm])
    assert opt_p.state[p]["w_in"].shape[1] == 9


@pytest.mark.parametrize("activation", ["tanh", "identity"])
def test_closed_form_memory_gradients_match_autograd(activation):
    g = torch.Generator().manual_seed(5)
    rows = torch.randn(7, 5, generator=g, dtype=torch.float64)
    w_in = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w_out = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    loss = 0.5 * ((memory_read(rows, w_in, w_out, activation) - rows) ** 2).sum()
    auto_in, auto_out = torch.autograd.grad(loss, (w_in, w_out))
    grad_in, grad_out = memory_grads(rows, w_in.detach(), w_out.detach(), activation)
    torch.testing.assert_close(grad_in, auto_in)
    torch.testing.assert_close(grad_out, auto_out)


def test_memory_learns_to_reproduce_a_recurring_gradient():
    p = nn.Parameter(torch.zeros(6, 9))
    opt = DMGD([p], lr=0.0, momentum=0.95, memory_lr=1.0, hidden=16)
    g = _grad()
    errors = []
    for _ in range(30):
        p.grad = g.clone()
        opt.step()
        u = g / torch.linalg.matrix_norm(g)
        errors.append(torch.linalg.matrix_norm(memory_read(u, opt.state[p]["w_in"], opt.state[p]["w_out"], "tanh")
                                               - u).item())
    assert errors[-1] < 0.5 * errors[0]


def test_newton_schulz_output_is_eq_52():
    p = nn.Parameter(torch.zeros(6, 9))
    opt = DMGD([p], lr=1.0, output="newton_schulz", hidden=4)
    g = _grad()
    p.grad = g.clone()
    opt.step()
    state = opt.state[p]
    u = g / torch.linalg.matrix_norm(g)
    recalled = memory_read(u, state["w_in"], state["w_out"], "tanh")
    torch.testing.assert_close(p.detach(), -math.sqrt(max(1.0, 6 / 9)) * newton_schulz(recalled))


def test_initialisation_is_seeded():
    p, q = nn.Parameter(torch.zeros(4, 4)), nn.Parameter(torch.zeros(4, 4))
    a, b = DMGD([p], seed=1), DMGD([q], seed=1)
    for param, opt in ((p, a), (q, b)):
        param.grad = torch.ones(4, 4)
        opt.step()
    assert torch.equal(a.state[p]["w_in"], b.state[q]["w_in"])
    c = DMGD([nn.Parameter(torch.zeros(4, 4))], seed=2)
    r = c.param_groups[0]["params"][0]
    r.grad = torch.ones(4, 4)
    c.step()
    assert not torch.equal(c.state[r]["w_in"], a.state[p]["w_in"])


@pytest.mark.parametrize("kwargs,field", [
    ({"lr": -1.0}, "DMGD.lr"),
    ({"momentum": 1.0}, "DMGD.momentum"),
    ({"memory_lr": -0.1}, "DMGD.memory_lr"),
    ({"hidden": 0}, "DMGD.hidden"),
    ({"activation": "relu"}, "DMGD.activation"),
    ({"output": "sign"}, "DMGD.output"),
    ({"seed": -1}, "DMGD.seed"),
])
def test_bad_hyper_parameters_raise_naming_them(kwargs, field):
    with pytest.raises(ConfigError) as info:
        DMGD([nn.Parameter(torch.zeros(3, 3))], **kwargs)
    assert info.value.field == field
