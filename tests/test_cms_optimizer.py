"""The ``optimizer`` CMS signal (D13, D16): level ℓ is a slow parameter stepped every step_periods[ℓ]
optimiser steps with its summed gradients; the clocks and buffers resume exactly from a checkpoint."""

import copy
import math

import pytest
import torch

from nestlearn.cli import main
from nestlearn.config import from_dict
from nestlearn.layers.cms import CMS, CMSConfig
from nestlearn.models import CausalLM
from nestlearn.models.hope_attention import HopeAttentionConfig
from nestlearn.optim import OptimConfig, build_optimizer
from nestlearn.optim.periodic import PeriodicOptimizer, periodic_parameters
from nestlearn.train import Trainer, load_run_config
from nestlearn.train.runlog import read_metrics

D = 8


def matrix(level) -> str:
    """The name of a level's first weight matrix (the form decides which: w_in or w_gate)."""
    return next(n for n, p in level.named_parameters() if p.ndim == 2)


@pytest.mark.parametrize("variant, form", [("sequential", "swiglu"), ("independent", "swiglu"), ("sequential", "mlp")])
def test_level_steps_every_period_with_the_summed_gradient(variant, form):
    torch.manual_seed(0)
    cms = CMS(D, CMSConfig(signal="optimizer", step_periods=(3, 2, 1), hidden_mult=2, variant=variant,
                           level_form=form)).double()
    assert cms.init_state(2) == {} and [lvl.chunk_size for lvl in cms.levels] == [None] * 3
    opt = build_optimizer(cms, OptimConfig(name="adamw", lr=1e-2, weight_decay=0.1))
    assert isinstance(opt, PeriodicOptimizer)
    per_level = len(list(cms.levels[0].parameters()))
    assert [(n.split(".")[1], p) for n, _, p in periodic_parameters(cms)] == [("0", 3)] * per_level + [("1", 2)] * per_level
    # Reference: plain AdamW per slow level, stepped by hand with the summed gradients.
    refs = {}
    for i, period in ((0, 3), (1, 2)):
        level = cms.levels[i]
        clones = {n: p.detach().clone().requires_grad_(True) for n, p in level.named_parameters()}
        groups = [{"params": [clones[n] for n in clones if clones[n].ndim >= 2], "weight_decay": 0.1},
                  {"params": [clones[n] for n in clones if clones[n].ndim < 2], "weight_decay": 0.0}]
        refs[i] = (period, clones, torch.optim.AdamW(groups, lr=1e-2), {n: 0 for n in clones})
    for step in range(1, 7):
        before = {n: p.detach().clone() for n, p in cms.named_parameters()}
        opt.zero_grad()
        cms(torch.randn(2, 5, D, dtype=torch.float64))[0].pow(2).sum().backward()
        grads = {n: p.grad.clone() for n, p in cms.named_parameters()}
        opt.step()
        assert all(torch.equal(p.grad, grads[n]) for n, p in cms.named_parameters()), "grads are restored"
        for i, (period, clones, ref_opt, sums) in refs.items():
            for n in clones:
                sums[n] = sums[n] + grads[f"levels.{i}.{n}"]
            if step % period == 0:
                for n, c in clones.items():
                    c.grad = sums[n]
                ref_opt.step()
                sums.update(dict.fromkeys(sums, 0))
            for n, c in clones.items():
                p = cms.levels[i].get_parameter(n)
                assert torch.equal(p, c), (step, i, n)
                assert torch.equal(p, before[f"levels.{i}.{n}"]) == (step % period != 0), (step, i, n)
                assert int(opt.state.get(p, {}).get("step", 0)) == step // period
        name = matrix(cms.levels[2])
        assert not torch.equal(cms.levels[2].get_parameter(name), before[f"levels.2.{name}"]), "period 1 steps every time"


def hope_attention(**cms):
    cfg = from_dict(HopeAttentionConfig, {"vocab_size": 32, "d_model": 16, "n_layers": 2, "n_heads": 2, "max_seq_len": 32,
                                          "cms": {"signal": "optimizer", "step_periods": [3, 2], **cms}}, prefix="model")
    torch.manual_seed(0)
    return CausalLM(cfg)


@pytest.mark.parametrize("name", ["muon", "m3", "dmgd"])
def test_matrix_optimizers_and_state_dict_round_trip(name):
    model = hope_attention()
    assert all(k.startswith("attn.") for k in model.init_state(1).layers[0])
    cfg = OptimConfig(name=name, lr=1e-2, adamw_lr=1e-3, slow_period=2)
    opt = build_optimizer(model, cfg)
    data = [torch.randint(0, 32, (2, 12)) for _ in range(6)]

    def train(m, o, batches):
        for x in batches:
            o.zero_grad()
            m(x[:, :-1], targets=x[:, 1:]).loss.backward()
            o.step()

    level = model.blocks[0].cms.levels[0]
    w = level.get_parameter(matrix(level))
    train(model, opt, data[:1])
    w1 = w.detach().clone()
    train(model, opt, data[1:2])
    assert torch.equal(w, w1)
    # Stop mid-period (step 2 of 3), copy through state_dict, and continue both.
    other = copy.deepcopy(model)
    other_opt = build_optimizer(other, cfg)
    other_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    train(model, opt, data[2:])
    train(other, other_opt, data[2:])
    assert not torch.equal(w, w1)
    for (n, a), b in zip(model.named_parameters(), other.parameters()):
        assert torch.equal(a, b), n


def test_depth_groups_share_out_the_periods():
    model = hope_attention(level_assignment="depth_groups")
    assert [blk.cms.cfg.step_periods for blk in model.blocks] == [(3,), (2,)]
    per_level = len(list(model.blocks[0].cms.levels[0].parameters()))
    assert [p for _, _, p in periodic_parameters(model)] == [3] * per_level + [2] * per_level


def trainer_config(out, text, *extra):
    return load_run_config(None, [
        f"data.source={text}", "model.family=hope_attention", "model.d_model=32", "model.n_layers=2",
        "model.n_heads=2", "model.max_seq_len=32", "model.cms.signal=optimizer", "model.cms.step_periods=[3, 2]",
        "train.seq_len=32", "train.batch_size=2", "train.steps=6", "train.warmup_steps=2", "train.log_every=1",
        "train.eval_every=6", "train.eval_tokens=64", "train.ckpt_every=6", "train.sample_tokens=4",
        "optim.lr=0.003", f"train.out_dir={out / 'run'}", *extra])


@pytest.mark.parametrize("optim", ["adamw", "muon"])
def test_trainer_resume_is_bit_identical(tmp_path, tiny_text, optim):
    opt = [f"optim.name={optim}"]
    Trainer(trainer_config(tmp_path / "a", tiny_text, *opt), progress=False).run()
    # Stop at step 4: the period-3 level holds one step of gradient, the period-2 level none.
    Trainer(trainer_config(tmp_path / "b", tiny_text, "train.stop_at=4", *opt), progress=False).run()
    Trainer(trainer_config(tmp_path / "b", tiny_text, *opt), resume=tmp_path / "b" / "run", progress=False).run()
    losses = [[r["loss"] for r in read_metrics(tmp_path / x / "run" / "metrics.jsonl") if "loss" in r] for x in "ab"]
    assert len(losses[0]) == 6 and losses[0] == losses[1]


@pytest.mark.parametrize("signal", ["optimizer", "lss"])
def test_cli_trains_hope_tiny_with_each_signal(tmp_path, tiny_text, capsys, signal):
    run = tmp_path / "run"
    sets = ["model.d_model=32", "model.n_layers=1", "model.cms.hidden_mult=2", "train.seq_len=32",
            "train.batch_size=4", "train.steps=6", "train.eval_every=6", "train.eval_tokens=256",
            "train.warmup_steps=1", "train.sample_tokens=4", "optim.lr=0.01", f"model.cms.signal={signal}"]
    args = ["train", "--config", "configs/hope-tiny.yaml", "--data", tiny_text, "--out", run, "--no-progress"]
    for s in sets:
        args += ["--set", s]
    assert main(list(map(str, args))) == 0
    capsys.readouterr()
    vals = [r["val_bpb"] for r in read_metrics(run / "metrics.jsonl") if "val_bpb" in r]
    assert all(map(math.isfinite, vals)) and vals[-1] < vals[0]
