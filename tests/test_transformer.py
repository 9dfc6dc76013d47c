import pytest
import torch

from nestlearn.errors import NestlearnError
from nestlearn.models import CausalLM, TransformerConfig


def tiny(**kw) -> CausalLM:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=48, **kw)
    return CausalLM(cfg).double()


@pytest.mark.parametrize("tie", [True, False])
def test_future_tokens_never_change_past_logits(tie):
    model = tiny(tie_embeddings=tie)
    x = torch.randint(0, 64, (3, 21))
    y = x.clone()
    y[:, 13:] = torch.randint(0, 64, (3, 8))
    a, b = model(x).logits, model(y).logits
    assert torch.equal(a[:, :13], b[:, :13])
    assert not torch.allclose(a[:, 13:], b[:, 13:])


def test_segmented_with_cache_equals_one_pass():
    model = tiny()
    x = torch.randint(0, 64, (2, 31))
    whole = model(x).logits
    state = model.init_state(2)
    parts = []
    for lo, hi in ((0, 1), (1, 12), (12, 13), (13, 31)):
        out = model(x[:, lo:hi], state=state)
        parts.append(out.logits)
        state = out.state
    assert state.pos == 31
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=0, atol=1e-12)


def test_kv_cache_generation_equals_full_recompute():
    model = tiny()
    prompt = torch.randint(0, 64, (2, 5))
    ids, _ = model.generate(prompt, 20, temperature=0)
    seq = prompt
    for _ in range(20):
        nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat((seq, nxt), dim=1)
    assert torch.equal(ids, seq)


def test_sampling_is_seeded():
    model = tiny()
    prompt = torch.randint(0, 64, (1, 4))
    a, _ = model.generate(prompt, 15, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(3))
    b, _ = model.generate(prompt, 15, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_sequence_longer_than_the_model_allows_is_an_error():
    model = tiny()
    with pytest.raises(NestlearnError, match="exceeds model.max_seq_len=48"):
        model(torch.zeros(1, 49, dtype=torch.long))
    state = model(torch.zeros(1, 40, dtype=torch.long)).state
    with pytest.raises(NestlearnError, match=r"cached 40 \+ new 9"):
        model(torch.zeros(1, 9, dtype=torch.long), state=state)


def test_tied_head_shares_the_embedding():
    tied, untied = tiny(tie_embeddings=True), tiny(tie_embeddings=False)
    assert tied.head_weight is tied.embed.weight
    assert untied.num_parameters(False) - tied.num_parameters(False) == 64 * 32


def test_tiny_model_learns_a_repeated_batch(fit_batch):
    losses = fit_batch(tiny().float(), torch.randint(0, 64, (4, 33)), 60)
    assert losses[-1] < 0.3 * losses[0]


def test_generation_past_the_context_slides_its_window():
    model = tiny()
    prompt = torch.randint(0, 64, (1, 40))
    ids, _ = model.generate(prompt, 30, temperature=0)
    assert ids.shape == (1, 70) and torch.equal(ids[:, :40], prompt)
    # Token 48 still sees the full 48-token context; from token 49 on, the last 24 tokens are re-read.
    assert torch.equal(ids[:, 48], model(ids[:, :48]).logits[:, -1].argmax(-1))
    assert torch.equal(ids[:, 49], model(ids[:, 25:49]).logits[:, -1].argmax(-1))
    assert torch.equal(ids[:, 50], model(ids[:, 25:50]).logits[:, -1].argmax(-1))
