"""OptimConfig validation, build_optimizer for every optimiser name, and named parameters on torch 2.4/2.5."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from nestlearn.errors import ConfigError
from nestlearn.optim import (
    DGD,
    DMGD,
    M3,
    OPTIMIZER_NAMES,
    CombinedOptimizer,
    DeltaMomentum,
    Muon,
    OptimConfig,
    PreconditionedMomentum,
    build_optimizer,
)
from nestlearn.optim import _common
from nestlearn.optim._common import NAMES_KEY, group_names




class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 8)
        self.norm = nn.LayerNorm(8)
        self.hidden = nn.Linear(8, 16)
        self.out = nn.Linear(16, 8)
        self.state0 = nn.Parameter(0.1 * torch.randn(8, 8))
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        h = self.embed(tokens)
        h = h + self.out(torch.tanh(self.hidden(self.norm(h)))) @ self.state0
        return self.head(h)


def _loss(model, seed):
    tokens = torch.randint(0, 20, (4, 10), generator=torch.Generator().manual_seed(seed))
    return nn.functional.cross_entropy(model(tokens[:, :-1]).reshape(-1, 20), tokens[:, 1:].reshape(-1))


def test_default_config_is_valid_and_builds_adamw_with_decay_on_matrices_only():
    OptimConfig().validate()
    model = Net()
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1))
    assert type(opt) is torch.optim.AdamW
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert group_names(decay) == ["state0", "hidden.weight", "out.weight"]
    assert set(group_names(no_decay)) == {"embed.weight", "norm.weight", "norm.bias", "hidden.bias", "out.bias"}


EXPECTED_MAIN = {"muon": Muon, "m3": M3, "dmgd": DMGD, "delta": DeltaMomentum, "precond": PreconditionedMomentum,
                 "dgd": DGD}


@pytest.mark.parametrize("name", [n for n in OPTIMIZER_NAMES if n != "adamw"])
def test_every_name_builds_a_combined_optimizer_that_trains(name):
    model = Net()
    lr = {"muon": 0.02, "m3": 1e-3, "dmgd": 0.1, "delta": 0.1, "precond": 3e-3, "dgd": 0.1}[name]
    opt = build_optimizer(model, OptimConfig(name=name, lr=lr, adamw_lr=3e-3))
    assert isinstance(opt, CombinedOptimizer)
    assert [type(o) for o in opt.optimizers] == [EXPECTED_MAIN[name], torch.optim.AdamW]
    main_names = {n for g in opt.optimizers[0].param_groups for n in group_names(g)}
    expected = {"hidden.weight", "out.weight"} if name == "dgd" else {"hidden.weight", "out.weight", "state0"}
    assert main_names == expected
    losses = []
    for step in range(8):
        opt.zero_grad()
        loss = _loss(model, 0)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_config_fields_reach_the_optimizers():
    cfg = OptimConfig(name="m3", lr=0.002, adamw_lr=0.0, betas=(0.8, 0.99, 0.7), slow_period=7, variant="ema",
                      alpha=0.5, ns_steps=3, ns_dtype="bfloat16")
    opt = build_optimizer(Net(), cfg)
    m3_group = opt.optimizers[0].param_groups[0]
    assert (m3_group["betas"], m3_group["slow_period"], m3_group["variant"], m3_group["alpha"],
            m3_group["ns_steps"], m3_group["ns_dtype"]) == ((0.8, 0.99, 0.7), 7, "ema", 0.5, 3, torch.bfloat16)
    assert all(g["lr"] == 0.002 and g["betas"] == (0.8, 0.99) for g in opt.optimizers[1].param_groups)
    delta = build_optimizer(Net(), OptimConfig(name="delta", side="left", eta_m=0.3)).optimizers[0]
    assert (delta.param_groups[0]["side"], delta.param_groups[0]["eta_m"],
            delta.param_groups[0]["preconditioner"]) == ("left", 0.3, "identity")
    precond = build_optimizer(Net(), OptimConfig(name="precond")).optimizers[0]
    assert precond.param_groups[0]["preconditioner"] == "rms"


def test_fields_have_simple_types():
    for f in dataclasses.fields(OptimConfig):
        assert f.type in ("str", "int", "float", "bool", "tuple[float, ...]"), f


@pytest.mark.parametrize("field,value,allowed", [
    ("name", "sgd", "'adamw', 'muon', 'm3'"),
    ("lr", -1e-3, ">= 0"),
    ("lr", float("inf"), "finite"),
    ("lr", "0.1", "finite number"),
    ("weight_decay", -0.1, ">= 0"),
    ("betas", (0.9,), "2 or 3"),
    ("betas[1]", (0.9, 1.0), "[0.0, 1.0)"),
    ("eps", 0.0, "> 0"),
    ("adamw_lr", -1.0, ">= 0"),
    ("momentum", 1.0, "[0.0, 1.0)"),
    ("nesterov", "yes", "true or false"),
    ("ns_steps", 2.0, "integer"),
    ("ns_coefficients", (1.0, 2.0), "three numbers"),
    ("ns_dtype", "float16", "'float32', 'bfloat16'"),
    ("muon_scale", "max", "'shape', 'rms', 'none'"),
    ("alpha", -1.0, ">= 0"),
    ("slow_period", 0, "integer >= 1"),
    ("variant", "adam", "'paper', 'ema'"),
    ("eta_m", -1.0, ">= 0"),
    ("side", "up", "'right', 'left'"),
    ("normalize_grad", 1, "true or false"),
    ("preconditioner", "shampoo", "'auto', 'identity', 'rms'"),
    ("memory_lr", -1.0, ">= 0"),
    ("memory_hidden", 0, "integer >= 1"),
    ("memory_activation", "relu", "'tanh', 'identity'"),
    ("dmgd_output", "sign", "'linear', 'newton_schulz'"),
    ("dgd_form", "short", "'long', 'neurips'"),
])
def test_invalid_fields_raise_config_error_naming_the_field(field, value, allowed):
    cfg = OptimConfig(**{field.split("[")[0]: value})
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    assert info.value.field == f"optim.{field}"
    assert allowed in str(info.value)
    with pytest.raises(ConfigError):
        build_optimizer(Net(), cfg)


def test_m3_needs_three_betas():
    with pytest.raises(ConfigError, match="optim.betas: m3 needs 3"):
        OptimConfig(name="m3", betas=(0.9, 0.999)).validate()
    OptimConfig(name="muon", betas=(0.9, 0.999)).validate()


def test_adamw_lr_defaults_to_lr():
    opt = build_optimizer(Net(), OptimConfig(name="muon", lr=0.02))
    assert all(g["lr"] == 0.02 for g in opt.param_groups)


# -- torch 2.4/2.5: torch.optim.Optimizer accepts (name, tensor) pairs only from torch 2.6 ----------
def _simulate_old_torch(monkeypatch):
    """Make the installed torch reject named pairs as 2.4/2.5 do, and switch off the flag computed at import."""
    real_add = torch.optim.Optimizer.add_param_group

    def add_param_group(self, param_group):
        params = param_group["params"]
        if not isinstance(params, torch.Tensor) and any(isinstance(p, tuple) for p in params):
            raise TypeError("optimizer can only optimize Tensors, but one of the params is tuple")
        real_add(self, param_group)

    monkeypatch.setattr(torch.optim.Optimizer, "add_param_group", add_param_group)
    monkeypatch.setattr(_common, "OPTIMIZER_TAKES_NAMES", False)


@pytest.fixture
def old_torch(monkeypatch):
    _simulate_old_torch(monkeypatch)


def _train_named(name):
    model = Net()
    opt = build_optimizer(model, OptimConfig(name=name, lr=0.01, weight_decay=0.1))
    for seed in range(3):
        opt.zero_grad()
        _loss(model, seed).backward()
        opt.step()
    return model, opt


def _all_groups(opt):
    return [g for child in getattr(opt, "optimizers", [opt]) for g in child.param_groups]


def test_probe_detects_old_torch(old_torch):
    assert _common._optimizer_takes_names() is False


def test_installed_torch_is_probed_correctly():
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    assert _common.OPTIMIZER_TAKES_NAMES is ((major, minor) >= (2, 6))


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_old_torch_builds_the_same_optimizer(name, monkeypatch):
    new_model, new_opt = _train_named(name)
    with monkeypatch.context() as patch:
        _simulate_old_torch(patch)
        old_model, old_opt = _train_named(name)
        for group in _all_groups(old_opt):
            assert "param_names" not in group and all(isinstance(p, torch.Tensor) for p in group["params"])
        fresh = build_optimizer(Net(), OptimConfig(name=name, lr=0.01, weight_decay=0.1))
        fresh.load_state_dict(old_opt.state_dict())
    for new, old in zip(new_model.parameters(), old_model.parameters(), strict=True):
        assert torch.equal(new, old)
    assert [group_names(g) for g in _all_groups(old_opt)] == [group_names(g) for g in _all_groups(new_opt)]
    assert all(group_names(g) for g in _all_groups(old_opt))


@pytest.mark.parametrize("factory", [Muon, M3, DMGD, DeltaMomentum, PreconditionedMomentum])
def test_old_torch_optimizers_take_named_pairs_and_groups(factory, old_torch):
    a, b = nn.Parameter(torch.randn(4, 6)), nn.Parameter(torch.randn(5, 6))
    opt = factory([("a", a)])
    opt.add_param_group({"params": [("b", b)], "lr": 0.0})
    assert [g[NAMES_KEY] for g in opt.param_groups] == [["a"], ["b"]]
    a.grad, b.grad = torch.randn(4, 6), torch.randn(5, 6)
    before = b.detach().clone()
    opt.step()
    assert torch.equal(b, before) and opt.param_groups[0]["params"][0] is a


def test_old_torch_error_messages_name_the_parameter(old_torch):
    with pytest.raises(ValueError, match="'layer.bias'"):
        Muon([("layer.weight", nn.Parameter(torch.randn(3, 3))), ("layer.bias", nn.Parameter(torch.zeros(3)))])
    model = nn.Sequential(nn.Linear(3, 2))
    opt = DGD(model, lr=0.1)
    model[0].weight.grad = torch.ones(2, 3)
    with pytest.raises(RuntimeError, match="'0.weight'"):
        opt.step()
    with pytest.raises(ValueError, match="with or without names"):
        Muon([("a", nn.Parameter(torch.randn(3, 3))), nn.Parameter(torch.randn(3, 3))])
