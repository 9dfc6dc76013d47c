"""M3 (Algorithm 1 of NL-L §7.2) and the tests of decisions.md D19."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nestlearn.errors import ConfigError
from nestlearn.optim import M3, newton_schulz

BETAS = (0.9, 0.999, 0.9)




def _grads(n, shape=(6, 10), seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(*shape, generator=g) for _ in range(n)]


def _run(grads, **kwargs):
    """Feed ``grads`` to M3 on one parameter; return the parameter's trajectory and the optimiser."""
    p = nn.Parameter(torch.zeros_like(grads[0]))
    opt = M3([p], **kwargs)
    trajectory = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        trajectory.append(p.detach().clone())
    return trajectory, opt, p


def _fast_branch(grads, lr, beta1, beta2, eps):
    """Lines 6–10 of Algorithm 1 without the slow term."""
    m1 = torch.zeros_like(grads[0])
    v = torch.zeros_like(grads[0])
    w = torch.zeros_like(grads[0])
    out = []
    for g in grads:
        m1 = m1 + beta1 * g
        v = v + beta2 * g * g
        w = w - lr * newton_schulz(m1) / (v.sqrt() + eps)
        out.append(w)
    return out


def test_alpha_zero_and_long_slow_period_equal_the_fast_branch():
    grads = _grads(12)
    expected = _fast_branch(grads, 0.01, 0.9, 0.999, 1e-8)
    no_slow_weight, _, _ = _run(grads, lr=0.01, alpha=0.0, slow_period=3)
    no_refresh, _, _ = _run(grads, lr=0.01, alpha=1.0, slow_period=100)
    for got_a, got_b, want in zip(no_slow_weight, no_refresh, expected):
        torch.testing.assert_close(got_a, want)
        torch.testing.assert_close(got_b, want)


def test_first_chunk_has_zero_slow_momentum_and_refresh_sums_the_chunk():
    f, beta3, lr, alpha = 4, 0.7, 0.01, 0.5
    grads = _grads(2 * f + 1)
    trajectory, opt, p = _run(grads[:f], lr=lr, betas=(0.9, 0.999, beta3), alpha=alpha, slow_period=f)
    # O2 stays zero through steps 1..f, so they follow the fast branch exactly.
    for got, want in zip(trajectory, _fast_branch(grads[:f], lr, 0.9, 0.999, 1e-8)):
        torch.testing.assert_close(got, want)
    state = opt.state[p]
    # Before step f+1: M2 = β3 · (sum of the first f gradients), O2 = NS(M2), chunk sum restarted.
    torch.testing.assert_close(state["M2"], beta3 * torch.stack(grads[:f]).sum(0))
    torch.testing.assert_close(state["O2"], newton_schulz(state["M2"]))
    assert torch.count_nonzero(state["chunk_sum"]) == 0
    assert state["step"] == f
    # Step f+1 uses the slow term.
    before = p.detach().clone()
    p.grad = grads[f].clone()
    opt.step()
    m1 = 0.9 * torch.stack(grads[: f + 1]).sum(0)
    v = 0.999 * (torch.stack(grads[: f + 1]) ** 2).sum(0)
    expected = before - lr * (newton_schulz(m1) + alpha * state["O2"]) / (v.sqrt() + 1e-8)
    torch.testing.assert_close(p.detach(), expected)
    # After 2f steps M2 holds β3 · (sum of all 2f gradients).
    for g in grads[f + 1: 2 * f]:
        p.grad = g.clone()
        opt.step()
    torch.testing.assert_close(state["M2"], beta3 * torch.stack(grads[: 2 * f]).sum(0))


def test_state_holds_the_documented_buffers():
    _, opt, p = _run(_grads(1), lr=0.01)
    assert set(opt.state[p]) == {"step", "M1", "M2", "V", "O2", "chunk_sum"}


@pytest.mark.parametrize("variant", ["paper", "ema"])
def test_scaling_gradients_leaves_orthogonal_parts_unchanged_and_scales_step_by_inverse(variant):
    c, f = 10.0, 3
    grads = _grads(2 * f + 2)
    kwargs = dict(lr=0.01, slow_period=f, variant=variant, eps=1e-12)
    base, opt_a, p_a = _run(grads, **kwargs)
    scaled, opt_b, p_b = _run([c * g for g in grads], **kwargs)
    state_a, state_b = opt_a.state[p_a], opt_b.state[p_b]
    torch.testing.assert_close(newton_schulz(state_b["M1"]), newton_schulz(state_a["M1"]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state_b["O2"], state_a["O2"], rtol=1e-4, atol=1e-5)
    assert torch.count_nonzero(state_a["O2"]) > 0
    previous_a, previous_b = torch.zeros_like(grads[0]), torch.zeros_like(grads[0])
    for wa, wb in zip(base, scaled):
        torch.testing.assert_close(wb - previous_b, (wa - previous_a) / c, rtol=1e-3, atol=1e-7)
        previous_a, previous_b = wa, wb


def test_ema_variant_first_step_and_refresh():
    f, lr = 2, 0.01
    beta1, beta2, beta3 = BETAS
    grads = _grads(f)
    trajectory, opt, p = _run(grads, lr=lr, slow_period=f, variant="ema")
    m1 = (1 - beta1) * grads[0]
    v_hat = (1 - beta2) * grads[0] ** 2 / (1 - beta2)
    torch.testing.assert_close(trajectory[0], -lr * newton_schulz(m1) / (v_hat.sqrt() + 1e-8))
    mean_grad = torch.stack(grads).mean(0)
    torch.testing.assert_close(opt.state[p]["M2"], (1 - beta3) * mean_grad)


def test_conv_kernel_is_accepted_and_vector_is_rejected_by_name():
    kernel = nn.Parameter(torch.zeros(4, 2, 3))
    kernel.grad = torch.randn(4, 2, 3)
    M3([kernel]).step()
    assert kernel.shape == (4, 2, 3) and torch.isfinite(kernel).all()
    with pytest.raises(ValueError, match=r"'norm\.weight'"):
        M3([("norm.weight", nn.Parameter(torch.ones(4)))])


@pytest.mark.parametrize("kwargs,field", [
    ({"lr": -1e-3}, "M3.lr"),
    ({"betas": (0.9, 0.999)}, "M3.betas"),
    ({"betas": (0.9, 1.0, 0.9)}, "M3.betas[1]"),
    ({"betas": (-0.1, 0.999, 0.9)}, "M3.betas[0]"),
    ({"alpha": -1.0}, "M3.alpha"),
    ({"eps": 0.0}, "M3.eps"),
    ({"slow_period": 0}, "M3.slow_period"),
    ({"slow_period": 2.5}, "M3.slow_period"),
    ({"variant": "adam"}, "M3.variant"),
    ({"ns_steps": -2}, "M3.ns_steps"),
    ({"weight_decay": -0.1}, "M3.weight_decay"),
])
def test_bad_hyper_parameters_raise_naming_them(kwargs, field):
    with pytest.raises(ConfigError) as info:
        M3([nn.Parameter(torch.zeros(3, 3))], **kwargs)
    assert info.value.field == field
    assert "must" in str(info.value)
