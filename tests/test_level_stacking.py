"""Ad-hoc level stacking (spec §6.4, D15, D17): a Transformer++ stacked into Hope-Attention is the same model at η = 0."""

import pytest
import torch

from nestlearn.data.tokenizer import ByteTokenizer
from nestlearn.errors import ConfigError
from nestlearn.layers.cms import CMSConfig, depth_group_chunk_sizes
from nestlearn.models import CausalLM, TransformerConfig
from nestlearn.models.hope_attention import HopeAttentionConfig
from nestlearn.models.lm import model_config_from_dict, model_config_to_dict
from nestlearn.models.stacking import from_transformer, stack_checkpoint

VOCAB = 48
CHUNKS = (16, 8, 4)  # 5 layers -> depth groups (16, 16, 8, 8, 4): shallow layers slowest
SEGMENTS = ((0, 7), (7, 8), (8, 30), (30, 50))


def pretrained(dtype=torch.float64, tie_embeddings=True, vocab=VOCAB):
    """A random Transformer++ with every weight (norm gains included) moved off its initial value."""
    torch.manual_seed(0)
    model = CausalLM(TransformerConfig(vocab_size=vocab, d_model=32, n_layers=5, n_heads=4, max_seq_len=64,
                                       tie_embeddings=tie_embeddings)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def segmented(model, x):
    state, parts = model.init_state(x.shape[0]), []
    for lo, hi in SEGMENTS:
        out = model(x[:, lo:hi], state=state)
        parts.append(out.logits)
        state = out.state
    return torch.cat(parts, 1)


@pytest.mark.parametrize("dtype, tie", [(torch.float64, True), (torch.float32, False)])
def test_zero_level_learning_rate_reproduces_the_transformer_exactly(dtype, tie):
    source = pretrained(dtype, tie)
    stacked = from_transformer(source, CMSConfig(chunk_sizes=CHUNKS, eta_max=0.0))
    x = torch.randint(0, VOCAB, (3, 50))
    with torch.no_grad():
        assert torch.equal(stacked(x).logits, source(x).logits)
        assert torch.equal(segmented(stacked, x), segmented(source, x))


def test_live_levels_match_until_the_first_write_then_differ():
    source = pretrained()
    stacked = from_transformer(source, CMSConfig(chunk_sizes=CHUNKS, eta_max=10.0, eta_init=0.5))
    x = torch.randint(0, VOCAB, (3, 50))
    with torch.no_grad():
        ref, y = source(x).logits, stacked(x).logits
        first_write = min(CHUNKS)
        # Before any write the levels read the pre-trained weights; batched (per-sample) and shared
        # weight products may round differently, so equality here is up to float64 rounding.
        torch.testing.assert_close(y[:, :first_write], ref[:, :first_write], rtol=0, atol=1e-12)
        assert (y[:, first_write:] - ref[:, first_write:]).abs().amax(dim=(0, 2)).min() > 1e-8
        torch.testing.assert_close(segmented(stacked, x), y, rtol=0, atol=1e-10)


def test_outer_gradients_reach_the_stacked_levels():
    stacked = from_transformer(pretrained(), CMSConfig(chunk_sizes=CHUNKS, eta_max=10.0, eta_init=0.5))
    x = torch.randint(0, VOCAB, (2, 21))
    stacked(x[:, :-1], targets=x[:, 1:]).loss.backward()
    level = stacked.blocks[-1].cms.levels[0]
    for p in (level.w_gate, level.w_up, level.w_down, level.norm.weight, level.key.weight, level.eta.bias):
        assert p.grad is not None and p.grad.abs().max() > 0


def test_assignment_is_recorded_in_the_config():
    stacked = from_transformer(pretrained(), CMSConfig(chunk_sizes=CHUNKS, eta_max=0.0))
    cfg = stacked.config
    assert isinstance(cfg, HopeAttentionConfig)
    assert (cfg.cms.level_assignment, cfg.cms.level_form, cfg.cms.hidden) == ("depth_groups", "swiglu", 96)
    assert [cfg.block_cms(i).chunk_sizes for i in range(5)] == [(16,), (16,), (8,), (8,), (4,)]
    assert [blk.cms.levels[0].chunk_size for blk in stacked.blocks] == [16, 16, 8, 8, 4]
    # The serialised config alone rebuilds the same layout.
    rebuilt = CausalLM(model_config_from_dict(model_config_to_dict(cfg)))
    assert rebuilt.state_dict().keys() == stacked.state_dict().keys()


@pytest.mark.parametrize("n_layers, chunks, expected", [
    (4, (8, 4, 2), (8, 8, 4, 2)),
    (6, (8, 4, 2), (8, 8, 4, 4, 2, 2)),
    (3, (8, 4, 2), (8, 4, 2)),
    (2, (8,), (8, 8)),
])
def test_depth_groups(n_layers, chunks, expected):
    assert depth_group_chunk_sizes(n_layers, chunks) == expected


def test_bad_stacking_requests():
    with pytest.raises(ConfigError, match="at most one level per layer"):
        from_transformer(pretrained(), CMSConfig(chunk_sizes=(32, 16, 8, 4, 2, 1)))
    with pytest.raises(ConfigError, match="cms.variant: depth_groups"):
        from_transformer(pretrained(), CMSConfig(chunk_sizes=(8, 4), variant="nested"))
    hope = CausalLM(HopeAttentionConfig(vocab_size=VOCAB, d_model=16, n_layers=1, n_heads=2,
                                        cms=CMSConfig(chunk_sizes=(4,))))
    with pytest.raises(ConfigError, match="model.family"):
        from_transformer(hope, CMSConfig())


def test_stack_checkpoint_round_trip(tmp_path):
    from nestlearn.train.checkpoint import save_checkpoint
    from nestlearn.train.loading import CHECKPOINT, load_model, model_state_tensors

    tok = ByteTokenizer()
    source = pretrained(torch.float32, vocab=tok.vocab_size).eval()
    meta = {"config": {"model": model_config_to_dict(source.config)}, "tokenizer": tok.describe(), "step": 3}
    save_checkpoint(tmp_path / "src" / CHECKPOINT, model_state_tensors(source), meta)
    stacked, _, new_meta = stack_checkpoint(tmp_path / "src", CMSConfig(chunk_sizes=CHUNKS, eta_max=0.0),
                                            out=tmp_path / "stacked")
    assert new_meta["stacking"]["layer_chunk_sizes"] == [16, 16, 8, 8, 4] and new_meta["step"] == 3
    loaded, _, loaded_meta = load_model(tmp_path / "stacked")
    assert loaded_meta["config"]["model"]["family"] == "hope_attention"
    x = torch.randint(0, tok.vocab_size, (2, 20))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, source(x).logits)
        assert torch.equal(stacked(x).logits, source(x).logits)
