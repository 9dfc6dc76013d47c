"""Behaviour every optimiser of nestlearn.optim shares: closures, zero gradients, state_dict, convergence."""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch
from torch import nn

from nestlearn.optim import DGD, DMGD, M3, DeltaMomentum, Muon, PreconditionedMomentum

# Every factory takes a bias-free model, so each optimiser can own all of its parameters alone, and
# a learning rate. M3's step scales like 1/|gradient| (Algorithm 1 divides an orthogonalised,
# scale-free matrix by √V), so it needs a learning rate matched to each problem's gradient scale.
FACTORIES: dict[str, Callable[[nn.Module, float], torch.optim.Optimizer]] = {
    "muon": lambda m, lr: Muon(m.named_parameters(), lr=lr),
    "muon_plain": lambda m, lr: Muon(m.named_parameters(), lr=lr, nesterov=False, weight_decay=0.01),
    "m3": lambda m, lr: M3(m.named_parameters(), lr=lr, slow_period=4),
    "m3_ema": lambda m, lr: M3(m.named_parameters(), lr=lr, slow_period=4, variant="ema"),
    "delta": lambda m, lr: DeltaMomentum(m.named_parameters(), lr=lr),
    "delta_left": lambda m, lr: DeltaMomentum(m.named_parameters(), lr=lr, side="left", preconditioner="rms",
                                              momentum=0.5),
    "precond": lambda m, lr: PreconditionedMomentum(m.named_parameters(), lr=lr),
    "dmgd": lambda m, lr: DMGD(m.named_parameters(), lr=lr),
    "dmgd_ns": lambda m, lr: DMGD(m.named_parameters(), lr=lr, output="newton_schulz"),
    "dgd": lambda m, lr: DGD(m, lr=lr),
    "dgd_neurips": lambda m, lr: DGD(m, lr=lr, form="neurips"),
}
# (least-squares lr, MLP lr)
LRS: dict[str, tuple[float, float]] = {
    "muon": (0.1, 0.1), "muon_plain": (0.1, 0.1), "m3": (3e-3, 1e-3), "m3_ema": (1e-3, 3e-4),
    "delta": (1.0, 1.0), "delta_left": (0.1, 0.1), "precond": (0.01, 0.01), "dmgd": (1.0, 1.0),
    "dmgd_ns": (0.3, 0.3), "dgd": (1.0, 0.1), "dgd_neurips": (1.0, 0.3),
}


def _make(name: str, model: nn.Module, problem: int) -> torch.optim.Optimizer:
    return FACTORIES[name](model, LRS[name][problem])




class _L2Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=-1)


# Inputs of every linear map are unit vectors: DGD's derivation assumes normalised inputs (spec
# §3.1), and its NeurIPS form W(I − x xᵀ) diverges without them.
def _least_squares(seed: int = 0) -> tuple[nn.Module, Callable[[int], torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    a = nn.functional.normalize(torch.randn(64, 16, generator=g), dim=-1)
    target = a @ torch.randn(8, 16, generator=g).T
    model = nn.Linear(16, 8, bias=False)
    nn.init.zeros_(model.weight)
    return model, lambda step: ((model(a) - target) ** 2).mean()


def _tiny_mlp(seed: int = 0) -> tuple[nn.Module, Callable[[int], torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 8, generator=g)
    y = torch.sin(x @ torch.randn(8, 2, generator=g))
    torch.manual_seed(seed)
    model = nn.Sequential(_L2Normalize(), nn.Linear(8, 32, bias=False), nn.Tanh(),
                          _L2Normalize(), nn.Linear(32, 32, bias=False), nn.Tanh(),
                          _L2Normalize(), nn.Linear(32, 2, bias=False))
    return model, lambda step: ((model(x) - y) ** 2).mean()


def _train(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable[[int], torch.Tensor], steps: int,
           start: int = 0) -> float:
    for step in range(start, start + steps):
        opt.zero_grad()
        loss_fn(step).backward()
        opt.step()
    return loss_fn(start + steps).item()


# (problem index into LRS, steps, loss that must be beaten as a fraction of the initial loss). On the
# MLP, DGD's fixed point satisfies W·E[x xᵀ] = −∇L, not ∇L = 0, so it cannot go much below 0.93.
@pytest.mark.parametrize("problem, steps, fraction", [(0, 60, 0.8), (1, 100, 0.93)], ids=["least_squares", "tiny_mlp"])
@pytest.mark.parametrize("name", FACTORIES)
def test_reduces_loss(name, problem, steps, fraction):
    model, loss_fn = (_least_squares, _tiny_mlp)[problem]()
    opt = _make(name, model, problem)
    before = loss_fn(0).item()
    after = _train(model, opt, loss_fn, steps)
    assert after < fraction * before, (before, after)


@pytest.mark.parametrize("name", FACTORIES)
def test_zero_gradients_give_finite_parameters(name):
    model, loss_fn = _tiny_mlp()
    opt = _make(name, model, 1)
    for _ in range(3):
        opt.zero_grad()
        (0.0 * loss_fn(0)).backward()
        opt.step()
    _train(model, opt, loss_fn, 2)
    for _ in range(2):
        opt.zero_grad()
        (0.0 * loss_fn(0)).backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", FACTORIES)
def test_step_with_closure_returns_loss_and_updates(name):
    model, loss_fn = _least_squares()
    opt = _make(name, model, 0)

    def closure():
        opt.zero_grad()
        loss = loss_fn(0)
        loss.backward()
        return loss

    before = model.weight.detach().clone()
    expected = loss_fn(0).item()
    first = opt.step(closure)
    assert first.item() == expected
    assert not torch.equal(before, model.weight)
    losses = [opt.step(closure).item() for _ in range(30)]
    assert losses[-1] < first.item()


@pytest.mark.parametrize("name", FACTORIES)
def test_state_dict_round_trip_mid_run_is_bit_identical(name):
    def batch_loss(model, step):
        g = torch.Generator().manual_seed(100 + step)
        x = torch.randn(16, 8, generator=g)
        return ((model(x) - torch.sin(x[:, :2])) ** 2).mean()

    model_a, _ = _tiny_mlp()
    opt_a = _make(name, model_a, 1)
    _train(model_a, opt_a, lambda s: batch_loss(model_a, s), 6)
    saved = copy.deepcopy(opt_a.state_dict())
    model_b = copy.deepcopy(model_a)
    opt_b = _make(name, model_b, 1)
    opt_b.load_state_dict(saved)
    _train(model_a, opt_a, lambda s: batch_loss(model_a, s), 5, start=6)
    _train(model_b, opt_b, lambda s: batch_loss(model_b, s), 5, start=6)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("name", FACTORIES)
def test_negative_lr_is_rejected_naming_lr(name):
    model, _ = _least_squares()
    with pytest.raises(ValueError, match=r"\blr\b"):
        if name.startswith("dgd"):
            DGD(model, lr=-1.0)
        else:
            type(_make(name, model, 0))(model.parameters(), lr=-1.0)
