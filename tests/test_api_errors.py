"""The Python API refuses bad input with nestlearn's own errors, one line each, in the CLI's words."""

import pytest
import torch

from nestlearn.config import load_yaml
from nestlearn.data.corpus import DataConfig, load_corpus
from nestlearn.errors import CheckpointError, ConfigError, DataError, NestlearnError
from nestlearn.eval.lm import evaluate_bpb
from nestlearn.models.lm import CausalLM, model_config_from_dict
from nestlearn.stateful import load_state

VOCAB = 32


@pytest.fixture(scope="module")
def hope():
    torch.manual_seed(0)
    cfg = {"family": "hope", "vocab_size": VOCAB, "d_model": 16, "n_layers": 1,
           "selfmod": {"chunk_size_memory": 4, "chunk_size_other": 8, "heads": 2}, "cms": {"chunk_sizes": [8, 4]}}
    return CausalLM(model_config_from_dict(cfg)).eval()


@pytest.mark.parametrize("tokens, message", [
    (torch.zeros(2, 0, dtype=torch.long), "tokens: must have shape (batch, seq) with batch >= 1 and seq >= 1, got (2, 0)"),
    (torch.zeros(0, 4, dtype=torch.long), "got (0, 4)"),
    (torch.zeros(5, dtype=torch.long), "got (5,)"),
    (torch.zeros(1, 2, 3, dtype=torch.long), "got (1, 2, 3)"),
    (torch.full((1, 4), VOCAB), f"tokens: ids must lie in [0, {VOCAB - 1}] (model.vocab_size={VOCAB}), got {VOCAB}"),
    (torch.tensor([[3, -1, 2]]), "got -1"),
    (torch.rand(1, 4), "tokens: must be a tensor of token ids (torch.int64 or torch.int32), got torch.float32"),
    (torch.ones(1, 4, dtype=torch.bool), "got torch.bool"),
    (torch.ones(1, 4, dtype=torch.uint8), "got torch.uint8"),
    ([[1, 2, 3]], "got list"),
])
def test_forward_refuses_bad_tokens(hope, tokens, message):
    with pytest.raises(NestlearnError) as info:
        hope(tokens)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_forward_takes_int64_and_int32_ids(hope):
    for dtype in (torch.int32, torch.int64):
        assert hope(torch.tensor([[1, 2, VOCAB - 1]], dtype=dtype)).logits.shape == (1, 3, VOCAB)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_new_tokens": -5}, "max_new_tokens: must be >= 0, got -5"),
    ({"top_k": VOCAB + 1}, f"top_k: must lie in [1, {VOCAB}] (the vocabulary), got {VOCAB + 1}"),
    ({"top_k": 0}, "top_k: must lie in [1, "),
    ({"temperature": float("nan")}, "temperature: must be a finite number >= 0, got nan"),
    ({"temperature": -0.5}, "temperature: must be >= 0"),
])
def test_generate_refuses_bad_arguments(hope, kwargs, message):
    args = {"max_new_tokens": 2, **kwargs}
    with pytest.raises(ConfigError) as info:
        hope.generate(torch.tensor([[1, 2]]), **args)
    assert message in str(info.value)


def test_generate_takes_top_k_equal_to_the_vocabulary_and_zero_new_tokens(hope):
    prompt = torch.tensor([[1, 2]])
    assert hope.generate(prompt, 3, top_k=VOCAB)[0].shape == (1, 5)
    assert torch.equal(hope.generate(prompt, 0)[0], prompt)


def test_a_missing_state_file_is_not_called_a_checkpoint(hope, tmp_path):
    with pytest.raises(CheckpointError, match="^state file not found: "):
        load_state(tmp_path / "absent.st", hope)
    (tmp_path / "broken.st").write_bytes(b"\0" * 40)
    with pytest.raises(CheckpointError, match="is not a readable state file"):
        load_state(tmp_path / "broken.st", hope)


def test_evaluate_bpb_never_scores_nothing(hope):
    ids, token_bytes = torch.arange(10) % VOCAB, torch.ones(VOCAB, dtype=torch.long)
    for kwargs, message in (({"seq_len": 0}, "seq_len: must be > 0"), ({"seq_len": -1}, "seq_len: must be > 0"),
                            ({"seq_len": 4, "batch_size": 0}, "batch_size: must be > 0")):
        with pytest.raises(ConfigError, match=message):
            evaluate_bpb(hope, ids, token_bytes, **kwargs)
    with pytest.raises(DataError, match="nothing to score"):
        evaluate_bpb(hope, ids[:1], token_bytes, 4)
    assert evaluate_bpb(hope, ids, token_bytes, 4)["bytes"] == 9


def test_empty_config_files_and_binary_corpora_are_refused(tmp_path):
    (tmp_path / "empty.yaml").write_text("# only a comment\n")
    with pytest.raises(ConfigError, match="^--config: .* is empty"):
        load_yaml(tmp_path / "empty.yaml")
    (tmp_path / "prog").write_bytes(b"\x7fELF\x02\x01\x01\x00" + b"text" * 100)
    with pytest.raises(DataError, match=r"looks binary \(a NUL byte at offset 7\)"):
        load_corpus(DataConfig(source=str(tmp_path / "prog")))
    (tmp_path / "ok.txt").write_bytes("ünïcode text, not binary\n".encode() * 50)
    assert load_corpus(DataConfig(source=str(tmp_path / "ok.txt"))).train
