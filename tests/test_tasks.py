"""Tiny models learn the synthetic tasks within seconds through the shared task loop."""

import torch

from nestlearn.data.synthetic import generate
from nestlearn.eval.tasks import fit_task, task_accuracy, task_loss, task_model
from nestlearn.models import TransformerConfig
from nestlearn.models.linear_memory import GatedDeltaNetConfig


def test_transformer_learns_mqar():
    kw = dict(seq_len=16, num_pairs=2, vocab_size=24)
    torch.manual_seed(0)
    model = task_model(TransformerConfig(d_model=32, n_layers=2, n_heads=2, max_seq_len=16), generate("mqar", 2, 0, **kw))
    before = task_accuracy(model, generate("mqar", 256, 99, **kw))
    fit_task(model, lambda step: generate("mqar", 64, 1000 + step, **kw), 300, lr=1e-2)
    after = task_accuracy(model, generate("mqar", 256, 99, **kw))
    # 12 possible values: chance is about 0.08.
    assert before < 0.2 and after > 0.3, (before, after)


def test_gated_deltanet_learns_parity():
    torch.manual_seed(0)
    cfg = GatedDeltaNetConfig(d_model=32, n_layers=2, n_heads=2, max_seq_len=16, chunk_size=8)
    model = task_model(cfg, generate("parity_check", 2, 0, length=6))
    # Batch 64: at batch 32 whether 300 steps find the parity solution hinged on float rounding.
    fit_task(model, lambda step: generate("parity_check", 64, 1000 + step, length=6), 300, lr=3e-3)
    assert task_accuracy(model, generate("parity_check", 256, 99, length=6)) > 0.75


def test_loss_scores_only_the_labelled_positions():
    batch = generate("parity_check", 4, 0, length=5)
    model = task_model(TransformerConfig(d_model=16, n_layers=1, n_heads=2, max_seq_len=8), batch)
    loss = task_loss(model, batch)
    changed = generate("parity_check", 4, 0, length=5)
    changed.targets[:, :-1] = -100  # already unscored: the loss must not change
    assert torch.equal(loss, task_loss(model, changed))


def test_formal_language_recognition_trains_a_set_valued_head():
    kw = dict(train_lengths=(1, 16))
    torch.manual_seed(0)
    model = task_model(TransformerConfig(d_model=32, n_layers=2, n_heads=2, max_seq_len=32),
                       generate("formal_aa_star", 2, 0, **kw))
    bin0 = generate("formal_aa_star", 128, 99, split="bin0", **kw)
    assert task_accuracy(model, bin0) < 0.1
    fit_task(model, lambda step: generate("formal_aa_star", 32, 1000 + step, **kw), 200, lr=3e-3)
    assert task_accuracy(model, bin0) > 0.9


def test_bench_cli_writes_json_table_and_plot(tmp_path, capsys):
    import json

    from nestlearn.cli import main

    out = tmp_path / "bench"
    code = main(["bench", "parity_check", "--models", "transformer,gated_deltanet", "--param", "length=4",
                 "--eval", "length=4,8", "--steps", "5", "--test-size", "16", "--out", str(out), "--no-progress"])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["settings"] == ["length=4", "length=8"]
    assert set(result["models"]) == {"transformer", "gated_deltanet"}
    assert all(len(r["losses"]) == 5 and 0 <= r["accuracy"]["length=8"] <= 1 for r in result["models"].values())
    assert (out / "bench.png").exists() and "| gated_deltanet |" in (out / "results.md").read_text()
    assert main(["bench", "parity", "--out", str(out)]) == 2
    assert "task: must be one of" in capsys.readouterr().err
    assert main(["bench", "mqar", "--models", "rnn", "--out", str(out)]) == 2
    assert "--models: unknown families" in capsys.readouterr().err
