"""Delta momentum (NL-L Eq 49, NL-N Eq 22) and preconditioned momentum (Eq 47)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nestlearn.errors import ConfigError
from nestlearn.optim import DeltaMomentum, PreconditionedMomentum




def _grads(n, shape=(5, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def _feed(opt, p, grads):
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach().clone()


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("normalize", [True, False])
def test_two_steps_match_eq_49(side, normalize):
    lr, alpha, eta_m = 0.1, 0.8, 0.5
    g1, g2 = _grads(2)
    w0 = torch.randn(5, 7, generator=torch.Generator().manual_seed(9))
    p = nn.Parameter(w0.clone())
    opt = DeltaMomentum([p], lr=lr, momentum=alpha, eta_m=eta_m, side=side, normalize_grad=normalize)
    got = _feed(opt, p, [g1, g2])

    def unit(g):
        return g / torch.linalg.matrix_norm(g) if normalize else g

    m1 = -lr * g1
    if side == "right":
        m2 = m1 @ (alpha * torch.eye(7) - eta_m * unit(g2).T @ unit(g2)) - lr * g2
    else:
        m2 = (alpha * torch.eye(5) - eta_m * unit(g2) @ unit(g2).T) @ m1 - lr * g2
    torch.testing.assert_close(got, w0 + m1 + m2)


@pytest.mark.parametrize("make", [
    lambda p: DeltaMomentum([p], lr=0.05, momentum=0.9, eta_m=0.0),
    lambda p: PreconditionedMomentum([p], lr=0.05, momentum=0.9, preconditioner="identity"),
], ids=["delta_without_gram_term", "preconditioned_identity"])
def test_reduces_to_classical_momentum(make):
    grads = _grads(8)
    w0 = torch.randn(5, 7)
    p = nn.Parameter(w0.clone())
    q = nn.Parameter(w0.clone())
    opt = make(p)
    sgd = torch.optim.SGD([q], lr=0.05, momentum=0.9)
    for g in grads:
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        sgd.step()
        torch.testing.assert_close(p.detach(), q.detach())


def test_normalised_gram_factor_keeps_momentum_bounded_for_huge_gradients():
    # With ‖Ĝ‖_F = 1 the factor αI − ĜᵀĜ has eigenvalues in [α − 1, α]; the raw Gram term of a huge
    # gradient makes the memory explode instead.
    start = torch.ones(5, 7)
    norms = {}
    for normalize in (True, False):
        p = nn.Parameter(torch.zeros(5, 7))
        opt = DeltaMomentum([p], lr=0.0, momentum=0.9, normalize_grad=normalize)
        opt.state[p]["momentum_buffer"] = start.clone()
        _feed(opt, p, [1e3 * g for g in _grads(3)])
        norms[normalize] = torch.linalg.matrix_norm(opt.state[p]["momentum_buffer"]).item()
    assert norms[True] <= torch.linalg.matrix_norm(start).item()
    assert norms[False] > 1e6


def test_vectors_and_kernels_are_treated_as_row_matrices():
    bias = nn.Parameter(torch.zeros(6))
    kernel = nn.Parameter(torch.zeros(3, 2, 2))
    opt = DeltaMomentum([bias, kernel], lr=0.1, momentum=0.5)
    g_bias, g_kernel = torch.randn(6), torch.randn(3, 2, 2)
    for _ in range(2):
        bias.grad, kernel.grad = g_bias.clone(), g_kernel.clone()
        opt.step()
    u = (g_bias / g_bias.norm()).reshape(1, 6)
    m1 = -0.1 * g_bias.reshape(1, 6)
    m2 = m1 @ (0.5 * torch.eye(6) - u.T @ u) - 0.1 * g_bias.reshape(1, 6)
    torch.testing.assert_close(bias.detach(), (m1 + m2).reshape(6))
    assert kernel.shape == (3, 2, 2) and opt.state[kernel]["momentum_buffer"].shape == (3, 4)


def test_preconditioned_rms_two_steps_match_eq_47():
    lr, alpha, beta2, eps = 0.01, 0.9, 0.99, 1e-8
    g1, g2 = _grads(2)
    p = nn.Parameter(torch.zeros(5, 7))
    got = _feed(PreconditionedMomentum([p], lr=lr, momentum=alpha, beta2=beta2, eps=eps), p, [g1, g2])
    v1 = (1 - beta2) * g1 ** 2
    v2 = beta2 * v1 + (1 - beta2) * g2 ** 2
    m1 = -lr * g1 / ((v1 / (1 - beta2)).sqrt() + eps)
    m2 = alpha * m1 - lr * g2 / ((v2 / (1 - beta2 ** 2)).sqrt() + eps)
    torch.testing.assert_close(got, m1 + m2)


def test_callable_preconditioner_is_used():
    p = nn.Parameter(torch.zeros(5, 7))
    g = _grads(1)[0]
    got = _feed(PreconditionedMomentum([p], lr=1.0, preconditioner=lambda grad, state: 2.0 * grad), p, [g])
    torch.testing.assert_close(got, -2.0 * g)


@pytest.mark.parametrize("cls,kwargs,field", [
    (DeltaMomentum, {"lr": -1.0}, "DeltaMomentum.lr"),
    (DeltaMomentum, {"momentum": 1.0}, "DeltaMomentum.momentum"),
    (DeltaMomentum, {"eta_m": -0.5}, "DeltaMomentum.eta_m"),
    (DeltaMomentum, {"side": "top"}, "DeltaMomentum.side"),
    (DeltaMomentum, {"preconditioner": "adam"}, "DeltaMomentum.preconditioner"),
    (DeltaMomentum, {"weight_decay": -1.0}, "DeltaMomentum.weight_decay"),
    (PreconditionedMomentum, {"lr": -1.0}, "PreconditionedMomentum.lr"),
    (PreconditionedMomentum, {"beta2": 1.5}, "PreconditionedMomentum.beta2"),
    (PreconditionedMomentum, {"eps": -1e-8}, "PreconditionedMomentum.eps"),
])
def test_bad_hyper_parameters_raise_naming_them(cls, kwargs, field):
    with pytest.raises(ConfigError) as info:
        cls([nn.Parameter(torch.zeros(3, 3))], **kwargs)
    assert info.value.field == field
