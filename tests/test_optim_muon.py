"""Muon: update formula, shape handling and hyper-parameter checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nestlearn.errors import ConfigError
from nestlearn.optim import Muon, newton_schulz




def _grads(shape, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("nesterov", [True, False])
def test_two_steps_match_the_formula(nesterov):
    lr, mu, wd = 0.1, 0.9, 0.05
    w0 = torch.randn(12, 5, generator=torch.Generator().manual_seed(1))
    p = nn.Parameter(w0.clone())
    opt = Muon([p], lr=lr, momentum=mu, nesterov=nesterov, weight_decay=wd)
    g1, g2 = _grads((12, 5), 2)
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
    scale = math.sqrt(12 / 5)
    expected = w0
    buf = torch.zeros_like(w0)
    for g in (g1, g2):
        buf = mu * buf + g
        direction = g + mu * buf if nesterov else buf
        expected = expected * (1 - lr * wd) - lr * scale * newton_schulz(direction)
    torch.testing.assert_close(p.detach(), expected)


@pytest.mark.parametrize("mode,factor", [("shape", 1.0), ("rms", 0.2 * math.sqrt(20)), ("none", 1.0)])
def test_scale_modes_on_a_wide_matrix(mode, factor):
    g = _grads((8, 20), 1)[0]
    p = nn.Parameter(torch.zeros(8, 20))
    p.grad = g
    Muon([p], lr=1.0, momentum=0.0, scale=mode).step()
    torch.testing.assert_close(p.detach(), -factor * newton_schulz(g))


def test_conv_kernel_is_orthogonalised_as_a_flattened_matrix():
    g = _grads((6, 3, 2, 2), 1)[0]
    p = nn.Parameter(torch.zeros(6, 3, 2, 2))
    p.grad = g
    Muon([p], lr=1.0, momentum=0.0).step()
    expected = -newton_schulz(g.reshape(6, 12)).reshape(6, 3, 2, 2)
    torch.testing.assert_close(p.detach(), expected)


def test_vector_parameter_raises_naming_it():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match=r"'0\.bias'.*ndim >= 2"):
        Muon(model.named_parameters())
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        Muon(model.parameters())


def test_added_param_group_is_checked():
    opt = Muon([nn.Parameter(torch.zeros(3, 3))])
    with pytest.raises(ValueError, match="ndim >= 2"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(3))]})


@pytest.mark.parametrize("kwargs,field", [
    ({"lr": -0.1}, "Muon.lr"),
    ({"momentum": 1.0}, "Muon.momentum"),
    ({"momentum": -0.1}, "Muon.momentum"),
    ({"weight_decay": -1.0}, "Muon.weight_decay"),
    ({"ns_steps": -1}, "Muon.ns_steps"),
    ({"ns_coefficients": (1.0, 2.0)}, "Muon.ns_coefficients"),
    ({"scale": "fan_in"}, "Muon.scale"),
    ({"ns_dtype": torch.int32}, "Muon.ns_dtype"),
    ({"lr": float("nan")}, "Muon.lr"),
])
def test_bad_hyper_parameters_raise_naming_them(kwargs, field):
    with pytest.raises(ConfigError) as info:
        Muon([nn.Parameter(torch.zeros(3, 3))], **kwargs)
    assert info.value.field == field


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return (torch.linalg.matrix_norm(got - want) / torch.linalg.matrix_norm(want)).item()


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
@pytest.mark.parametrize("nesterov", [True, False])
def test_agrees_with_torch_optim_muon(nesterov):
    # torch keeps an EMA momentum and this class a running sum; Newton–Schulz is scale-invariant,
    # so the orthogonalised directions agree. torch iterates in bfloat16, which costs about 1 %.
    w0 = torch.randn(16, 8, generator=torch.Generator().manual_seed(4))
    ours, theirs = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    opt_ours = Muon([ours], lr=0.02, momentum=0.9, nesterov=nesterov, weight_decay=0.1)
    opt_theirs = torch.optim.Muon([theirs], lr=0.02, momentum=0.9, nesterov=nesterov, weight_decay=0.1)
    for g in _grads((16, 8), 5, seed=5):
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    assert _relative_error(ours.detach() - w0, theirs.detach() - w0) < 0.03


def test_bfloat16_newton_schulz_option():
    g = _grads((16, 8), 1)[0]
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        p = nn.Parameter(torch.zeros(16, 8))
        p.grad = g.clone()
        Muon([p], lr=1.0, ns_dtype=dtype).step()
        runs[dtype] = p.detach()
    assert runs[torch.bfloat16].dtype == torch.float32
    assert 0 < _relative_error(runs[torch.bfloat16], runs[torch.float32]) < 0.05
