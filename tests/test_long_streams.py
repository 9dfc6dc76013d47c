"""Stable by construction (design.md S1–S6): every recurrent family stays finite over long streams in
float32 at its defaults, also with its gates started at the top of their range, and Hope and Titans
train 400 steps from the CLI without a non-finite loss, logging their fast-weight norms."""

import json
import math
from pathlib import Path

import pytest
import torch

from nestlearn.cli import main
from nestlearn.eval.stability import RECURRENT, read_stream, row_config, stream
from nestlearn.models.lm import CausalLM
from nestlearn.train.config import load_run_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(autouse=True)
def _flush_denormal():
    # Decayed fast weights reach the subnormal range over thousands of tokens, where CPU arithmetic is
    # many times slower; the values are the same to float32's normal precision.
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.mark.parametrize("gates", ["default", "top"])
@pytest.mark.parametrize("family", RECURRENT)
def test_every_recurrent_family_reads_4096_tokens_finitely(family, gates):
    cfg, _ = row_config(CONFIGS, family, gates)
    cfg.model.vocab_size = 256
    cfg.model.max_seq_len = 4096  # the attention families cache the whole stream
    torch.manual_seed(0)
    model = CausalLM(cfg.model).eval()
    for kind in ("kjv", "random"):
        result = read_stream(model, stream(kind, 4096), segment=1024)
        assert result["finite"], f"{family} ({gates} gates, {kind}): {result['first_nonfinite']}"
        if family != "linear-attention":  # unnormalised linear attention's state is a growing sum
            assert 0 < result["max_norm"] < 1e3, result


@pytest.mark.parametrize("family", ["hope", "titans"])
def test_hope_and_titans_train_400_steps_from_the_cli_at_their_defaults(tmp_path, tiny_text, capsys, family):
    """The model at its shipped config; the batch is small so that the test takes seconds."""
    run = tmp_path / "run"
    code = main(["train", "--config", str(CONFIGS / f"{family}-tiny.yaml"), "--data", str(tiny_text), "--out",
                 str(run), "--no-progress", "--set", "train.steps=400", "--set", "train.batch_size=2",
                 "--set", "train.seq_len=64", "--set", "train.eval_every=400", "--set", "train.eval_tokens=512",
                 "--set", "train.log_every=50", "--set", "train.ckpt_every=400", "--set", "train.sample_tokens=4"])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    logged = [r for r in records if "loss" in r]
    assert all(0 < r["fast_norm_max"] < 1e3 for r in logged), [r["fast_norm_max"] for r in logged]
    assert "fast_norm/layer1.mem" in logged[-1] and "val_fast_norm/layer1.mem" in records[-1], sorted(records[-1])
    assert records[-1]["val_bpb"] < 4.5


def test_a_diverged_step_names_the_layer_memory_and_tokens(tmp_path, tiny_text):
    """design.md S6: the divergence error replays the step under the monitor and says where the fast
    weights first became non-finite."""
    from nestlearn.train import Trainer
    from nestlearn.train.trainer import TrainingDiverged

    cfg = load_run_config(None, ["model.family=hope", "model.d_model=32", "model.n_layers=2",
                                 "model.selfmod.chunk_size_memory=4", "model.selfmod.chunk_size_other=8",
                                 "model.cms.chunk_sizes=[8,4]", "train.batch_size=2", "train.seq_len=16",
                                 f"data.source={tiny_text}", f"train.out_dir={tmp_path / 'run'}"])
    trainer = Trainer(cfg, progress=False)
    with torch.no_grad():  # poison the output memory's initial state in the second block only
        trainer.model.blocks[1].selfmod.initial["mem"]["W1"].fill_(math.inf)
    with pytest.raises(TrainingDiverged, match=r"first became non-finite in layer1\.mem at tokens 0–3"):
        trainer.train_step()
