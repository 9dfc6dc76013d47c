import json
import math

import pytest
import torch

from nestlearn.errors import CheckpointError, ConfigError, DataError
from nestlearn.train import Trainer, load_model, load_run_config
from nestlearn.train.runlog import read_metrics
from nestlearn.train.schedule import lr_factor


def config(tmp_path, text, *extra):
    return load_run_config(None, [
        f"data.source={text}", "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.max_seq_len=32",
        "train.seq_len=32", "train.batch_size=4", "train.steps=8", "train.warmup_steps=2", "train.log_every=1",
        "train.eval_every=4", "train.eval_tokens=512", "train.ckpt_every=4", "train.sample_tokens=16",
        "optim.lr=0.003", f"train.out_dir={tmp_path / 'run'}", *extra])


def losses(out_dir):
    return [r["loss"] for r in read_metrics(out_dir / "metrics.jsonl") if "loss" in r]


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    factors = [lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("optim", ["adamw", "m3", "muon", "dmgd"])
def test_resume_is_bit_identical(tmp_path, tiny_text, optim):
    opt = [f"optim.name={optim}", "optim.slow_period=2"]
    straight = tmp_path / "straight"
    Trainer(config(straight, tiny_text, *opt), progress=False).run()
    halves = tmp_path / "halves"
    Trainer(config(halves, tiny_text, "train.stop_at=3", *opt), progress=False).run()
    first = losses(halves / "run")
    assert len(first) == 3
    Trainer(config(halves, tiny_text, *opt), resume=halves / "run", progress=False).run()
    a, b = losses(straight / "run"), losses(halves / "run")
    assert len(a) == 8 and a == b, "N steps straight and N/2 + resume + N/2 must give the same losses bit for bit"
    model_a, _, _ = load_model(straight / "run")
    model_b, _, _ = load_model(halves / "run")
    for (name, pa), pb in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_run_writes_metrics_plot_report_and_learns(tmp_path, tiny_text):
    cfg = config(tmp_path, tiny_text, "train.steps=40", "train.eval_every=20", "train.batch_size=8")
    result = Trainer(cfg, progress=False).run()
    out = tmp_path / "run"
    for name in ("metrics.jsonl", "loss.png", "report.md", "config.yaml", "checkpoint.safetensors"):
        assert (out / name).exists(), name
    vals = [r["val_bpb"] for r in read_metrics(out / "metrics.jsonl") if "val_bpb" in r]
    assert vals[-1] < 5.0 < 8.0, vals  # a random byte model scores ~8 bits per byte
    assert result["val"]["bpb"] == pytest.approx(vals[-1])
    report = (out / "report.md").read_text()
    assert "bits per byte" in report and result["sample"] in report


def test_bpe_run_saves_its_tokenizer_and_reports_bits_per_byte(tmp_path, tiny_text):
    cfg = config(tmp_path, tiny_text, "data.tokenizer=bpe", "data.bpe_vocab_size=300", "train.steps=4")
    result = Trainer(cfg, progress=False).run()
    assert (tmp_path / "run" / "tokenizer.json").exists()
    model, tok, meta = load_model(tmp_path / "run")
    assert tok.vocab_size == 300 == model.config.vocab_size and meta["tokenizer"]["kind"] == "bpe"
    # bpb divides by bytes, not tokens: more bytes than tokens were scored.
    assert result["val"]["bytes"] > result["val"]["tokens"]
    assert result["val"]["bpb"] == pytest.approx(result["val"]["loss"] * result["val"]["tokens"]
                                                 / (math.log(2) * result["val"]["bytes"]))


def test_resume_with_a_different_config_is_refused(tmp_path, tiny_text):
    Trainer(config(tmp_path, tiny_text, "train.stop_at=4"), progress=False).run()
    with pytest.raises(CheckpointError, match=r"model.d_model: checkpoint 32, requested 64"):
        Trainer(config(tmp_path, tiny_text, "model.d_model=64"), resume=tmp_path / "run", progress=False)
    trainer = Trainer(config(tmp_path, tiny_text, "optim.lr=0.001"), resume=tmp_path / "run",
                      allow_config_change=True, progress=False)
    trainer.run()
    meta = json.loads(json.dumps(trainer.metadata()))
    assert meta["config_overrides"][0]["changes"][0][0] == "optim.lr"


def test_existing_run_folder_is_not_overwritten(tmp_path, tiny_text):
    Trainer(config(tmp_path, tiny_text, "train.stop_at=4"), progress=False).run()
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        Trainer(config(tmp_path, tiny_text), progress=False)


def test_sizes_that_do_not_fit(tmp_path, tiny_text):
    with pytest.raises(ConfigError, match="train.seq_len"):
        Trainer(config(tmp_path, tiny_text, "train.seq_len=64"), progress=False)
    with pytest.raises(ConfigError, match="model.vocab_size"):
        Trainer(config(tmp_path, tiny_text, "model.vocab_size=100"), progress=False)
    short = tmp_path / "short.txt"
    short.write_bytes(b"x" * 36)  # 32 train bytes, 2 validation, 2 test
    with pytest.raises(DataError, match="train split has"):
        Trainer(config(tmp_path, short), progress=False)


def test_gradient_accumulation_matches_one_large_batch(tmp_path, tiny_text):
    # Two micro-batches of 2 draw the same windows as one batch of 4 and average to the same gradient.
    big = Trainer(config(tmp_path / "a", tiny_text, "train.batch_size=4", "train.grad_accum=1"), progress=False)
    acc = Trainer(config(tmp_path / "b", tiny_text, "train.batch_size=2", "train.grad_accum=2"), progress=False)
    for _ in range(3):
        ma, mb = big.train_step(), acc.train_step()
        assert ma["loss"] == pytest.approx(mb["loss"], rel=1e-5)
    for pa, pb in zip(big.model.parameters(), acc.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_trains(tmp_path, tiny_text):
    trainer = Trainer(config(tmp_path, tiny_text, "train.bf16=true", "train.steps=4"), progress=False)
    result = trainer.run()
    assert math.isfinite(result["val"]["bpb"]) and result["val"]["bpb"] < 8.5
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters()), "autocast keeps float32 weights"


def test_seed_fixes_the_run(tmp_path, tiny_text):
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        Trainer(config(tmp_path / name, tiny_text, "train.steps=3", f"train.seed={seed}"), progress=False).run()
        runs[name] = losses(tmp_path / name / "run")
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_divergence_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path, tiny_text):
    from nestlearn.train.trainer import TrainingDiverged

    Trainer(config(tmp_path, tiny_text, "train.stop_at=4"), progress=False).run()
    before = (tmp_path / "run" / "checkpoint.safetensors").read_bytes()
    trainer = Trainer(config(tmp_path, tiny_text), resume=tmp_path / "run", progress=False)
    with torch.no_grad():
        trainer.model.embed.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"diverged at step 5.*optim.lr"):
        trainer.run()
    assert (tmp_path / "run" / "checkpoint.safetensors").read_bytes() == before
