"""Speed and logging options of the trainer: torch.compile, activation checkpointing, TensorBoard."""

import shutil
import sys

import pytest
import torch

from nestlearn.config import from_dict
from nestlearn.errors import ConfigError
from nestlearn.models import CausalLM, TransformerConfig
from nestlearn.models.hope import HopeConfig
from nestlearn.train import Trainer, load_run_config
from nestlearn.train.runlog import read_metrics


def config(tmp_path, text, *extra):
    return load_run_config(None, [
        f"data.source={text}", "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=32",
        "train.seq_len=32", "train.batch_size=2", "train.steps=3", "train.warmup_steps=2", "train.log_every=1",
        "train.eval_every=2", "train.eval_tokens=64", "train.ckpt_every=100", "train.sample_tokens=4",
        "optim.lr=0.003", f"train.out_dir={tmp_path / 'run'}", *extra])


def losses(out_dir):
    return [r["loss"] for r in read_metrics(out_dir / "metrics.jsonl") if "loss" in r]


def block_calls(model):
    calls = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda module, args: calls.append(module))
    return calls


@pytest.mark.parametrize("family", ["transformer", "hope"])
def test_activation_checkpointing_recomputes_blocks_and_keeps_gradients(family):
    fields = {"vocab_size": 64, "d_model": 32, "n_layers": 2, "max_seq_len": 32}
    cfg = from_dict(TransformerConfig, {**fields, "n_heads": 2}) if family == "transformer" else from_dict(HopeConfig, fields)
    torch.manual_seed(0)
    model = CausalLM(cfg).double()
    tokens = torch.randint(0, 64, (2, 21))
    grads = {}
    for recompute in (False, True):
        model.zero_grad()
        model.activation_checkpointing = recompute
        calls = block_calls(model)
        model(tokens[:, :-1], targets=tokens[:, 1:]).loss.backward()
        assert len(calls) == (4 if recompute else 2), "each block runs again in the backward pass"
        grads[recompute] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        for block in model.blocks:
            block._forward_pre_hooks.clear()
    assert grads[False].keys() == grads[True].keys()
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-12, atol=1e-14, msg=name)
    with torch.no_grad():
        calls = block_calls(model)
        model(tokens)
        assert len(calls) == 2, "no recomputation without gradients (validation, generation)"


def test_activation_checkpointing_in_the_trainer_gives_the_same_losses(tmp_path, tiny_text):
    Trainer(config(tmp_path / "a", tiny_text), progress=False).run()
    trainer = Trainer(config(tmp_path / "b", tiny_text, "train.activation_checkpointing=true"), progress=False)
    assert trainer.model.activation_checkpointing
    trainer.run()
    torch.testing.assert_close(losses(tmp_path / "b" / "run"), losses(tmp_path / "a" / "run"), rtol=1e-6, atol=0)


def test_tensorboard_events_hold_the_logged_scalars(tmp_path, tiny_text):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(config(tmp_path, tiny_text, "train.tensorboard=true"), progress=False).run()
    out = tmp_path / "run"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/bpb", "train/lr", "val/bpb", "val/loss"} <= tags
    logged = read_metrics(out / "metrics.jsonl")
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert loss == [(r["step"], pytest.approx(r["loss"])) for r in logged if "loss" in r]
    val = [(e.step, e.value) for e in events.Scalars("val/bpb")]
    assert val == [(r["step"], pytest.approx(r["val_bpb"])) for r in logged if "val_bpb" in r]
    assert [step for step, _ in val] == [0, 2, 3]


def test_tensorboard_without_the_package_is_a_config_error(tmp_path, tiny_text, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match="train.tensorboard.*pip install"):
        Trainer(config(tmp_path, tiny_text, "train.tensorboard=true"), progress=False)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on the CPU (inductor) needs a C compiler")
def test_compile_on_and_off_give_the_same_losses(tmp_path, tiny_text):
    # The first compile of a tiny model takes about 40 s of CPU time (inductor generates and builds C++).
    Trainer(config(tmp_path / "eager", tiny_text), progress=False).run()
    trainer = Trainer(config(tmp_path / "compiled", tiny_text, "train.compile=true"), progress=False)
    assert trainer.train_model is not trainer.wrapped
    trainer.run()
    torch.testing.assert_close(losses(tmp_path / "compiled" / "run"), losses(tmp_path / "eager" / "run"),
                               rtol=1e-4, atol=0)


def test_compile_chunks_switches_the_chunk_step_for_the_run(tmp_path, tiny_text, monkeypatch):
    """train.compile_chunks compiles the memories' chunk step (tests/test_memory.py checks that the
    compiled step computes what the eager one does; a real compile takes minutes, so it is stubbed)."""
    import nestlearn.train.trainer as trainer_module

    calls = []
    monkeypatch.setattr(trainer_module, "compile_chunk_step", lambda *args: calls.append(args))
    Trainer(config(tmp_path / "off", tiny_text), progress=False)
    assert calls == []
    trainer = Trainer(config(tmp_path / "on", tiny_text, "train.compile_chunks=true"), progress=False)
    assert calls == [()] and trainer.cfg.train.compile_chunks


def test_flush_denormal_is_recorded_and_changes_results_only_below_float32_tolerance(tmp_path, tiny_text):
    """train.flush_denormal (on by default on CPU) sets flush-to-zero for the run and is recorded in its
    config; a Hope run with it gives the unflushed run's losses to float32 tolerance."""
    runs = {}
    try:
        for flush in (True, False):
            out = tmp_path / f"flush-{flush}"
            cfg = load_run_config(None, [
                f"data.source={tiny_text}", "model.family=hope", "model.d_model=32", "model.n_layers=2",
                "model.max_seq_len=32", "model.cms.chunk_sizes=[16,8]", "train.seq_len=32", "train.batch_size=2",
                "train.steps=3", "train.warmup_steps=2", "train.log_every=1", "train.eval_every=3",
                "train.eval_tokens=64", "train.sample_tokens=4", f"train.out_dir={out / 'run'}",
                f"train.flush_denormal={str(flush).lower()}"])
            Trainer(cfg, progress=False).run()
            runs[flush] = losses(out / "run")
            assert (out / "run" / "config.yaml").read_text().count(f"flush_denormal: {str(flush).lower()}") == 1
    finally:
        torch.set_flush_denormal(False)  # the process-wide default, for the tests that follow
    assert len(runs[True]) == 3
    torch.testing.assert_close(torch.tensor(runs[True]), torch.tensor(runs[False]), rtol=1e-5, atol=1e-6)
