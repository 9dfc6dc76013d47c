"""Parameter routing (decisions.md D20) and the combined optimiser."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nestlearn.optim import (
    M3,
    CombinedOptimizer,
    Muon,
    OptimConfig,
    build_optimizer,
    route_parameters,
)




class TinyLM(nn.Module):
    def __init__(self, tie: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(40, 16)
        self.norm = nn.LayerNorm(16)
        self.rms = nn.RMSNorm(16)
        self.conv = nn.Conv1d(16, 16, 3, groups=16, padding=2)
        self.up = nn.Linear(16, 32)
        self.down = nn.Linear(32, 16, bias=False)
        self.memory_init = nn.Parameter(0.1 * torch.randn(16, 16))
        self.gate = nn.Linear(16, 1)
        self.scale = nn.Parameter(torch.ones(()))
        self.tagged = nn.Parameter(0.1 * torch.randn(16, 16))
        self.tagged._nestlearn_no_muon = True
        self.frozen = nn.Parameter(torch.zeros(16, 16), requires_grad=False)
        self.head = nn.Linear(16, 40, bias=False)
        if tie:
            self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        h = h + self.conv(self.norm(h).transpose(1, 2))[..., : tokens.shape[1]].transpose(1, 2)
        h = h + self.down(torch.tanh(self.up(self.rms(h))))
        h = h + torch.sigmoid(self.gate(h)) * (h @ self.memory_init + h @ self.tagged + h @ self.frozen)
        return self.head(self.scale * h)


def _tokens(seed: int) -> torch.Tensor:
    return torch.randint(0, 40, (4, 12), generator=torch.Generator().manual_seed(seed))


def _lm_loss(model: nn.Module, seed: int) -> torch.Tensor:
    tokens = _tokens(seed)
    logits = model(tokens[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, 40), tokens[:, 1:].reshape(-1))


EXPECTED_REASONS = {
    "embed.weight": "embedding",
    "norm.weight": "norm", "norm.bias": "norm",
    "rms.weight": "norm",
    "conv.weight": "conv", "conv.bias": "conv",
    "up.weight": "hidden matrix", "up.bias": "bias",
    "down.weight": "hidden matrix",
    "memory_init": "hidden matrix",
    "gate.weight": "dimension of 1", "gate.bias": "bias",
    "scale": "ndim != 2",
    "tagged": "tagged",
}


def test_each_parameter_lands_in_the_expected_group():
    routing = route_parameters(TinyLM())
    assert routing.reasons == EXPECTED_REASONS
    assert {n for n, _ in routing.matrix} == {"up.weight", "down.weight", "memory_init"}
    assert "frozen" not in routing.reasons and "head.weight" not in routing.reasons


def test_tied_head_goes_to_adamw_under_any_name():
    model = TinyLM()
    routing = route_parameters(model)
    assert any(p is model.head.weight for _, p in routing.adamw)
    assert all(p is not model.head.weight for _, p in routing.matrix)


def test_untied_head_is_found_by_argument_by_get_output_embeddings_or_by_tag():
    model = TinyLM(tie=False)
    assert route_parameters(model).reasons["head.weight"] == "hidden matrix"
    assert route_parameters(model, head=model.head).reasons["head.weight"] == "lm_head"
    model.get_output_embeddings = lambda: model.head
    assert route_parameters(model).reasons["head.weight"] == "lm_head"
    tagged = TinyLM(tie=False)
    tagged.head._nestlearn_no_muon = True
    assert route_parameters(tagged).reasons["head.weight"] == "tagged"


def _param_ids(opt):
    return sorted(id(p) for g in opt.param_groups for p in g["params"])


def test_combined_optimizer_covers_every_trainable_parameter_once():
    model = TinyLM()
    opt = build_optimizer(model, OptimConfig(name="muon", lr=0.02, adamw_lr=1e-3))
    assert isinstance(opt, CombinedOptimizer)
    assert [type(o) for o in opt.optimizers] == [Muon, torch.optim.AdamW]
    assert _param_ids(opt) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    # AdamW has a decayed group (tagged matrix, conv kernel) and a non-decayed one.
    assert [g["lr"] for g in opt.param_groups] == [0.02, 1e-3, 1e-3]


def test_lambda_lr_scheduler_drives_every_child():
    model = TinyLM()
    opt = build_optimizer(model, OptimConfig(name="m3", lr=0.01, adamw_lr=0.002, slow_period=2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(3):
        opt.zero_grad()
        _lm_loss(model, step).backward()
        opt.step()
        scheduler.step()
    m3_group, adamw_group = opt.optimizers[0].param_groups[0], opt.optimizers[1].param_groups[0]
    assert m3_group["lr"] == pytest.approx(0.01 / 4)
    assert adamw_group["lr"] == pytest.approx(0.002 / 4)
    trained = [p for p, b in zip(model.parameters(), before) if p.requires_grad and not torch.equal(p, b)]
    assert len(trained) == len([p for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("name", ["muon", "m3", "dgd"])
def test_state_dict_round_trip_with_scheduler_is_bit_identical(name):
    cfg = OptimConfig(name=name, lr=0.01, slow_period=3)

    def make(model):
        opt = build_optimizer(model, cfg)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.9 ** step)

    def train(model, opt, scheduler, steps):
        for step in steps:
            opt.zero_grad()
            _lm_loss(model, step).backward()
            opt.step()
            scheduler.step()

    model_a = TinyLM()
    opt_a, sched_a = make(model_a)
    train(model_a, opt_a, sched_a, range(4))
    saved = copy.deepcopy({"opt": opt_a.state_dict(), "sched": sched_a.state_dict()})
    # Rebuild and load, as a resumed run does (deepcopy would drop the parameter-level tag).
    model_b = TinyLM()
    model_b.load_state_dict(model_a.state_dict())
    opt_b, sched_b = make(model_b)
    opt_b.load_state_dict(saved["opt"])
    sched_b.load_state_dict(saved["sched"])
    assert [g["lr"] for g in opt_b.param_groups] == [g["lr"] for g in opt_a.param_groups]
    train(model_a, opt_a, sched_a, range(4, 8))
    train(model_b, opt_b, sched_b, range(4, 8))
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)


def test_closure_is_evaluated_once_and_zero_grad_clears_all():
    model = TinyLM()
    opt = build_optimizer(model, OptimConfig(name="muon"))
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = _lm_loss(model, 0)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert len(calls) == 1 and torch.isfinite(loss)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_combined_optimizer_rejects_overlap_bad_state_and_new_groups():
    a, b = nn.Parameter(torch.zeros(3, 3)), nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="more than one parameter group"):
        CombinedOptimizer([Muon([a]), M3([a, b])])
    opt = CombinedOptimizer([Muon([a]), M3([b])])
    with pytest.raises(ValueError, match="expected 2"):
        opt.load_state_dict({"optimizers": [opt.optimizers[0].state_dict()]})
    with pytest.raises(NotImplementedError):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2, 2))]})
    with pytest.raises(ValueError):
        CombinedOptimizer([])


def test_merged_state_view_reads_without_creating_entries():
    a, b = nn.Parameter(torch.zeros(3, 3)), nn.Parameter(torch.zeros(3, 3))
    opt = CombinedOptimizer([Muon([a]), M3([b])])
    a.grad, b.grad = torch.ones(3, 3), torch.ones(3, 3)
    opt.step()
    assert set(opt.state[a]) == {"momentum_buffer"} and "M1" in opt.state[b]
    assert len(opt.state) == 2
    with pytest.raises(KeyError):
        opt.state[nn.Parameter(torch.zeros(1))]
    assert len(opt.optimizers[0].state) == 1
