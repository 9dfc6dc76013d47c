"""Hugging Face integration: a saved model loads through the Auto classes with the native logits,
generate() matches CausalLM.generate token for token, the cache equals recomputation, and a checkpoint
converts to a Hugging Face folder and back unchanged."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from nestlearn.cli import main
from nestlearn.data.tokenizer import BPETokenizer, ByteTokenizer
from nestlearn.errors import ConfigError
from nestlearn.hf import NestlearnCache, NestlearnConfig, NestlearnForCausalLM
from nestlearn.hf.modeling import CACHE_FIELD
from nestlearn.models.lm import CausalLM, model_config_from_dict
from nestlearn.stateful import learn
from nestlearn.train.checkpoint import save_checkpoint
from nestlearn.train.config import RunConfig
from nestlearn.train.loading import load_model

VOCAB = 48
# Tiny members of four kinds of family: attention, Hope (self-modifying memory + CMS levels that
# write within the test sequences), a linear memory, and a memory/attention hybrid.
FAMILIES = {
    "transformer": {"n_heads": 2, "max_seq_len": 24},
    "hope": {"selfmod": {"chunk_size_memory": 4, "chunk_size_other": 8, "heads": 2}, "cms": {"chunk_sizes": [8, 4]}},
    "gated_deltanet": {"n_heads": 2, "chunk_size": 4},
    "titans_mac": {"n_heads": 2, "chunk_size": 4, "n_persistent": 2},
}


def tiny(family: str, **changes) -> CausalLM:
    torch.manual_seed(0)
    data = {"family": family, "vocab_size": VOCAB, "d_model": 16, "n_layers": 1, **FAMILIES[family], **changes}
    return CausalLM(model_config_from_dict(data)).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> (native model, folder written by save_pretrained)."""
    out = {}
    for family in FAMILIES:
        model = tiny(family)
        path = tmp_path_factory.mktemp(family)
        NestlearnForCausalLM.from_native(model).save_pretrained(path)
        out[family] = model, path
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_auto_classes_load_the_native_model_and_generate_like_it(saved, family):
    model, path = saved[family]
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
    assert isinstance(AutoConfig.from_pretrained(path), NestlearnConfig)
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    assert isinstance(hf, NestlearnForCausalLM) and hf.config.nestlearn_model["family"] == family
    tokens = torch.randint(0, VOCAB, (2, 11))
    assert torch.equal(hf(tokens).logits, model(tokens).logits)

    prompt = tokens[:, :5]
    native, _ = model.generate(prompt, 9, temperature=0)
    assert torch.equal(hf.generate(prompt, max_new_tokens=9, do_sample=False), native)
    torch.manual_seed(7)
    native, _ = model.generate(prompt, 9, temperature=0.8)
    torch.manual_seed(7)
    # top_k=0: no top-k filter, as nestlearn's top_k=None (transformers defaults to 50).
    assert torch.equal(hf.generate(prompt, max_new_tokens=9, do_sample=True, temperature=0.8, top_k=0), native)


def test_a_folder_saved_before_gate_form_loads_as_eq92(tmp_path):
    """design.md S12: a Gated DeltaNet folder whose config predates the switch was Eq 92's form."""
    model = tiny("gated_deltanet", gate_form="eq92")
    NestlearnForCausalLM.from_native(model).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["nestlearn_model"]["gate_form"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.config.nestlearn_model["gate_form"] == "eq92"
    tokens = torch.randint(0, VOCAB, (2, 11))
    assert torch.equal(hf(tokens).logits, model(tokens).logits)


def test_untied_head_and_sliding_window_past_max_seq_len(tmp_path):
    model = tiny("transformer", tie_embeddings=False)
    NestlearnForCausalLM.from_native(model).save_pretrained(tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(hf.model.head.weight, model.head.weight)
    prompt = torch.randint(0, VOCAB, (2, 6))
    # 6 + 30 > max_seq_len = 24: both continue by re-reading the last 12 tokens.
    torch.manual_seed(3)
    native, _ = model.generate(prompt, 30, temperature=1.0, top_k=5)
    torch.manual_seed(3)
    assert torch.equal(hf.generate(prompt, max_new_tokens=30, do_sample=True, top_k=5), native)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cached_decoding_equals_recomputation(family):
    hf = NestlearnForCausalLM.from_native(tiny(family)).double().eval()
    tokens = torch.randint(0, VOCAB, (2, 13))
    full = hf(tokens).logits
    out = hf(tokens[:, :4])
    steps = [out.logits]
    for t in range(4, tokens.shape[1]):
        out = hf(tokens[:, t:t + 1], past_key_values=out.past_key_values)
        steps.append(out.logits)
    assert isinstance(out.past_key_values, NestlearnCache) and out.past_key_values.get_seq_length() == 13
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-10)

    prompt = tokens[:, :5]
    cached = hf.generate(prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(cached, hf.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False))
    beams = hf.generate(prompt, max_new_tokens=4, num_beams=3, do_sample=False)
    assert torch.equal(beams, hf.generate(prompt, max_new_tokens=4, num_beams=3, do_sample=False, use_cache=False))


@pytest.mark.skipif(int(transformers.__version__.split(".")[0]) < 5,
                    reason="transformers 4.x slices a filled cache's input by cache_position, not the attention mask")
def test_generation_continues_a_learned_state():
    model = tiny("hope")
    hf = NestlearnForCausalLM.from_native(model).eval()
    state, _ = learn(model, torch.randint(0, VOCAB, (30,)), segment=8)
    prompt = torch.randint(0, VOCAB, (1, 4))
    native, _ = model.generate(prompt, 6, temperature=0, state=state)
    # transformers' convention for a filled cache: the attention mask spans cache + new tokens.
    out = hf.generate(prompt, max_new_tokens=6, do_sample=False, **{CACHE_FIELD: NestlearnCache(state)},
                      attention_mask=torch.ones(1, state.pos + 4, dtype=torch.long), return_dict_in_generate=True)
    assert torch.equal(out.sequences, native)
    assert getattr(out, CACHE_FIELD).get_seq_length() == state.pos + 4 + 5


def test_bad_input_padding_and_labels():
    with pytest.raises(ConfigError, match="model.family"):
        NestlearnConfig(nestlearn_model={"family": "nope", "vocab_size": VOCAB})
    with pytest.raises(ConfigError, match="model.vocab_size"):
        NestlearnConfig(nestlearn_model={"family": "hope"})
    hf = NestlearnForCausalLM.from_native(tiny("gated_deltanet")).eval()
    tokens = torch.randint(0, VOCAB, (2, 7))
    with pytest.raises(ConfigError, match="attention_mask"):
        hf(tokens, attention_mask=torch.tensor([[0] * 2 + [1] * 5, [1] * 7]))
    native = hf.model(tokens[:, :-1], targets=tokens[:, 1:]).loss
    torch.testing.assert_close(hf(tokens, labels=tokens).loss, native)


def write_checkpoint(path, model: CausalLM, tokenizer) -> None:
    """A checkpoint as the trainer writes it (model tensors, run config, tokenizer)."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    meta = {"format": 1, "config": RunConfig(model=model.config).to_dict(), "step": 3,
            "tokenizer": tokenizer.describe(),
            "tokenizer_json": tokenizer.to_json() if isinstance(tokenizer, BPETokenizer) else None}
    save_checkpoint(path, tensors, meta)


@pytest.mark.parametrize("family, kind", [("hope", "byte"), ("titans_mac", "bpe")])
def test_convert_round_trip(tmp_path, capsys, family, kind, tiny_text):
    text = tiny_text.read_bytes()[:4000]
    tokenizer = ByteTokenizer() if kind == "byte" else BPETokenizer.train(text, 300)
    model = tiny(family, vocab_size=tokenizer.vocab_size)
    write_checkpoint(tmp_path / "run" / "checkpoint.safetensors", model, tokenizer)

    assert main(["convert", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tokens = torch.randint(0, tokenizer.vocab_size, (1, 10))
    assert torch.equal(hf(tokens).logits, model(tokens).logits)
    sample = text[:500].decode("utf-8", errors="ignore")
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tokenizer(sample)["input_ids"] == tokenizer.encode(sample.encode()).tolist()

    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    back, back_tokenizer, meta = load_model(tmp_path / "back")
    assert torch.equal(back(tokens).logits, model(tokens).logits)
    assert back_tokenizer.describe() == tokenizer.describe()
    assert meta["config"] == RunConfig(model=model.config).to_dict() and meta["step"] == 3
    capsys.readouterr()

    assert main(["convert", str(tmp_path / "run"), str(tmp_path / "hf")]) == 2
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "already exists" in err[0] and err[1].startswith("error: checkpoint not found")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "nestlearn"


@pytest.mark.parametrize("family", ["transformer", "hope"])
def test_generate_logs_no_warning(saved, family):
    """generate on a saved folder (greedy, sampling, beams) says nothing with the installed transformers."""
    import logging

    from transformers.utils import logging as hf_logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = hf_logging.get_logger("transformers")
    logger.addHandler(handler)
    # warning_once remembers what it said in this process: forget, so an earlier test cannot hide it.
    logging.Logger.warning_once.cache_clear()
    try:
        hf = AutoModelForCausalLM.from_pretrained(saved[family][1]).eval()
        prompt = torch.randint(0, VOCAB, (1, 4))
        hf.generate(prompt, max_new_tokens=3, do_sample=False)
        hf.generate(prompt, max_new_tokens=3, do_sample=True, top_k=0)
        hf.generate(prompt, max_new_tokens=3, num_beams=2, do_sample=False)
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
