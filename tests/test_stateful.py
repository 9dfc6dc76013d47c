"""A model that keeps learning: read a stream into the fast state, save it, restore it, query later."""

from pathlib import Path

import pytest
import torch

from nestlearn.cli import main
from nestlearn.config import from_dict
from nestlearn.errors import CheckpointError, ConfigError, NestlearnError
from nestlearn.models import CausalLM, TransformerConfig
from nestlearn.models.hope import HopeConfig
from nestlearn.stateful import document_spans, learn, load_state, save_state


def tiny_hope(seed=0):
    cfg = from_dict(HopeConfig, {"vocab_size": 64, "d_model": 16, "n_layers": 1,
                                 "selfmod": {"chunk_size_memory": 4, "chunk_size_other": 8},
                                 "cms": {"chunk_sizes": [8, 4]}}, prefix="model")
    torch.manual_seed(seed)
    return CausalLM(cfg).eval()


def test_learning_in_segments_equals_one_pass_and_state_round_trips(tmp_path):
    model = tiny_hope()
    ids = torch.randint(0, 64, (45,))
    one, _ = learn(model, ids, segment=45)
    pieces, _ = learn(model, ids, segment=7)
    for a, b in zip(one.flat().values(), pieces.flat().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    path = save_state(tmp_path / "s.safetensors", model, pieces)
    restored, meta = load_state(path, model)
    assert restored.pos == 45 and meta["family"] == "hope"
    prompt = torch.randint(0, 64, (1, 3))
    a, _ = model.generate(prompt, 12, temperature=0, state=pieces)
    b, _ = model.generate(prompt, 12, temperature=0, state=restored)
    assert torch.equal(a, b)
    assert not torch.equal(model(prompt, state=restored).logits, model(prompt).logits), "the memory must matter"


def test_reset_policies():
    model = tiny_hope()
    sep = torch.tensor([63, 63])
    doc_a, doc_b = torch.randint(0, 60, (20,)), torch.randint(0, 60, (13,))
    ids = torch.cat((doc_a, sep, doc_b))
    assert document_spans(ids, sep) == [(0, 22), (22, 35)]
    after_sep, stats = learn(model, ids, policy="separator", separator=sep, segment=5)
    only_b, _ = learn(model, doc_b, segment=5)
    assert stats["documents"] == 2
    for a, b in zip(after_sep.flat().values(), only_b.flat().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    reset, _ = learn(model, ids, policy="reset", segment=10)
    last, _ = learn(model, ids[30:], segment=10)
    assert reset.pos == last.pos == 5
    carried, _ = learn(model, ids, policy="carry", segment=10)
    assert carried.pos == 35
    with pytest.raises(ConfigError, match="policy"):
        learn(model, ids, policy="sometimes")
    with pytest.raises(ConfigError, match="separator"):
        learn(model, ids, policy="separator")


def test_a_state_only_fits_its_model(tmp_path):
    model, other = tiny_hope(0), tiny_hope(1)
    state, _ = learn(model, torch.randint(0, 64, (10,)))
    path = save_state(tmp_path / "s.safetensors", model, state)
    with pytest.raises(CheckpointError, match="another model"):
        load_state(path, other)


def test_a_state_of_another_layout_is_refused_by_name(tmp_path):
    """A file from a version whose CMS state held pending writes (``{i}.G*``) names what it lacks."""
    from nestlearn.train.checkpoint import load_checkpoint, save_checkpoint

    model = tiny_hope()
    state, _ = learn(model, torch.randint(0, 64, (10,)))
    path = save_state(tmp_path / "s.safetensors", model, state)
    tensors, meta = load_checkpoint(path, what="state file")
    save_checkpoint(path, {k.replace("W1_b", "G1"): v for k, v in tensors.items()}, meta)
    with pytest.raises(CheckpointError, match=r"lacks state entries .*cms\.0\.W1_b"):
        load_state(path, model)


def test_bounded_context_models_refuse_long_streams():
    model = CausalLM(TransformerConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, max_seq_len=32))
    with pytest.raises(NestlearnError, match="recurrent family"):
        learn(model, torch.randint(0, 64, (40,)))


def test_cli_learn_then_generate(tmp_path, tiny_text, capsys):
    run = tmp_path / "run"
    config = Path(__file__).parent.parent / "configs" / "hope-tiny.yaml"
    args = ["train", "--config", str(config), "--data", str(tiny_text), "--out", str(run), "--no-progress",
            "--set", "model.d_model=16", "--set", "model.n_layers=1", "--set", "train.steps=2",
            "--set", "train.batch_size=2", "--set", "train.seq_len=32", "--set", "train.eval_tokens=64",
            "--set", "train.sample_tokens=2"]
    assert main(args) == 0
    doc = tmp_path / "doc.txt"
    doc.write_text("The secret word is violet.\n\nAnd the second document.\n")
    state = tmp_path / "state.safetensors"
    assert main(["learn", str(run), "--text", str(doc), "--state", str(state), "--separator", r"\n\n"]) == 0
    out = capsys.readouterr().out
    assert "2 document(s)" in out and state.exists()
    assert main(["learn", str(run), "--text", str(doc), "--state", str(state)]) == 0
    assert "stream position" in capsys.readouterr().out
    # A non-ASCII separator is its UTF-8 bytes (escapes aside), not those bytes read as Latin-1.
    pilcrows = tmp_path / "pilcrows.txt"
    pilcrows.write_text("one¶two¶three", encoding="utf-8")
    assert main(["learn", str(run), "--text", str(pilcrows), "--state", str(tmp_path / "p.st"), "--separator", "¶"]) == 0
    assert "3 document(s)" in capsys.readouterr().out
    assert main(["generate", str(run), "--state", str(state), "--prompt", "The", "--tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("The")
    assert main(["learn", str(run), "--text", str(tmp_path / "missing.txt"), "--state", str(state)]) == 2
    assert "--text: file not found" in capsys.readouterr().err
    assert main(["generate", str(run), "--state", str(run / "checkpoint.safetensors")]) == 2
    assert "not a nestlearn state file" in capsys.readouterr().err
