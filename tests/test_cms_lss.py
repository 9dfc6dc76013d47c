"""The ``lss`` CMS signal (D13, spec §1.3 Eq 9): the layer's write with a given u equals the literal
token-by-token equations, and the model-level driver equals a naive per-chunk recomputation."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from nestlearn.config import from_dict
from nestlearn.layers.cms import CMS, CMSConfig
from nestlearn.layers.cms.naive import cms_reference
from nestlearn.models import CausalLM
from nestlearn.models.hope import HopeConfig
from nestlearn.models.hope_attention import HopeAttentionConfig
from nestlearn.models.lm import replace_config
from nestlearn.models.lss import LEARN, TOKENS, lss_reference

D = 8
VARIANTS = [("sequential", "slow_first"), ("sequential", "fast_first"), ("nested", "slow_first"),
            ("independent", "slow_first")]


def make_cms(variant="sequential", order="slow_first", form="mlp", chunk_sizes=(8, 4, 2), seed=0):
    torch.manual_seed(seed)
    cms = CMS(D, CMSConfig(chunk_sizes=chunk_sizes, variant=variant, order=order, hidden_mult=2, signal="lss",
                           eta_max=1.0, eta_init=0.5, level_form=form)).double()
    with torch.no_grad():
        for level in cms.levels:
            level.eta.weight.normal_(0, 0.3)
            level.initial["W1"].normal_(0, 0.1)
            level.norm.weight.uniform_(0.5, 1.5)
        if cms.agg is not None:
            cms.agg.normal_()
    return cms


def values(cms, batch, length):
    return {i: 0.5 * torch.randn(batch, length, D, dtype=torch.float64) for i in range(len(cms.levels))}


@pytest.mark.parametrize("form", ["mlp", "swiglu"])
@pytest.mark.parametrize("variant, order", VARIANTS)
def test_layer_write_with_given_u_equals_reference(variant, order, form):
    cms = make_cms(variant, order, form)
    for length, pos in ((1, 0), (23, 5)):
        x = torch.randn(2, length, D, dtype=torch.float64)
        u = values(cms, 2, length)
        state = cms.init_state(2, dtype=torch.float64)
        y, s = cms(x, state, pos, u=u)
        y_ref, s_ref = cms_reference(cms, x, state, pos, u=u)
        assert y.abs().max() < 50, "test inputs must keep the writes stable"
        torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
        assert s.keys() == s_ref.keys()
        for key in s:
            torch.testing.assert_close(s[key], s_ref[key], rtol=0, atol=1e-10, msg=key)
    # The writes matter: the same inputs with u = 0 read the initial weights throughout.
    frozen = cms(x, state, pos, u={i: torch.zeros_like(v) for i, v in u.items()})[0]
    assert (frozen - y).abs().max() > 1e-3


@pytest.mark.parametrize("variant, form", [("sequential", "mlp"), ("nested", "swiglu")])
def test_layer_gradients_agree_with_reference(variant, form):
    cms = make_cms(variant, form=form, chunk_sizes=(4, 2))
    x = torch.randn(1, 9, D, dtype=torch.float64, requires_grad=True)
    u = {i: v.requires_grad_(True) for i, v in values(cms, 1, 9).items()}
    params = [x, *u.values(), *cms.parameters()]
    g_fast = torch.autograd.grad(cms(x, u=u)[0].pow(2).sum(), params)
    g_ref = torch.autograd.grad(cms_reference(cms, x, u=u)[0].pow(2).sum(), params)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_layer_gradcheck_through_writes():
    cms = make_cms("nested", chunk_sizes=(4, 2))
    x = torch.randn(1, 5, D, dtype=torch.float64, requires_grad=True)
    u = values(cms, 1, 5)
    assert torch.autograd.gradcheck(lambda inp, w: cms(inp, u=u)[0], (x, cms.levels[1].initial["W2"]))


def test_layer_without_u_or_tape_is_an_error():
    with pytest.raises(ValueError, match="needs u"):
        make_cms()(torch.randn(1, 3, D, dtype=torch.float64))


def hope_attention(variant="sequential", **cms):
    cfg = from_dict(HopeAttentionConfig, {"vocab_size": 32, "d_model": 16, "n_layers": 2, "n_heads": 2, "max_seq_len": 64,
                                          "cms": {"chunk_sizes": [8, 4], "signal": "lss", "variant": variant,
                                                  "eta_max": 50.0, "eta_init": 0.5, **cms}}, prefix="model")
    torch.manual_seed(0)
    return CausalLM(cfg).double()


def hope(variant="sequential"):
    cfg = from_dict(HopeConfig, {"vocab_size": 32, "d_model": 16, "n_layers": 2, "max_seq_len": 64,
                                 "selfmod": {"chunk_size_memory": 4, "chunk_size_other": 8, "heads": 2},
                                 "cms": {"chunk_sizes": [8, 4], "signal": "lss", "variant": variant,
                                         "eta_max": 50.0, "eta_init": 0.5}}, prefix="model")
    torch.manual_seed(0)
    return CausalLM(cfg).double()


MODELS = {"hope_attention/sequential": lambda: hope_attention(),
          "hope_attention/nested": lambda: hope_attention("nested"),
          "hope_attention/independent": lambda: hope_attention("independent"),
          "hope_attention/depth_groups": lambda: hope_attention(level_assignment="depth_groups"),
          "hope/sequential": lambda: hope()}


@pytest.mark.parametrize("name", list(MODELS))
def test_driver_equals_naive_per_chunk_reference(name):
    model = MODELS[name]()
    x = torch.randint(0, 32, (2, 19))
    out = model(x)
    ref = lss_reference(model, x)
    torch.testing.assert_close(out.logits, ref, rtol=0, atol=1e-10)
    params = list(model.parameters())
    g = torch.autograd.grad(F.cross_entropy(out.logits.reshape(-1, 32), x.reshape(-1)), params, allow_unused=True)
    g_ref = torch.autograd.grad(F.cross_entropy(ref.reshape(-1, 32), x.reshape(-1)), params, allow_unused=True)
    for a, b in zip(g, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    # The writes matter: the slow level's initial weights get gradient through them, and the logits
    # differ from the model with frozen levels.
    cfg = model.config
    frozen = CausalLM(replace_config(cfg, cms=dataclasses.replace(cfg.cms, eta_max=0.0))).double()
    frozen.load_state_dict(model.state_dict())
    assert (frozen(x).logits - out.logits).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["hope_attention/nested", "hope/sequential"])
def test_segments_with_carried_state_equal_one_pass(name):
    model = MODELS[name]()
    x = torch.randint(0, 32, (2, 27))
    whole = model(x)
    with torch.no_grad():  # the no-gradient path (evaluation, streaming) detaches what it returns
        state, parts = None, []
        for lo, hi in ((0, 5), (5, 6), (6, 13), (13, 16), (16, 27)):
            out = model(x[:, lo:hi], state=state)
            assert not out.logits.requires_grad
            parts.append(out.logits)
            state = out.state
    torch.testing.assert_close(torch.cat(parts, 1), whole.logits, rtol=0, atol=1e-10)
    end = whole.state.flat()
    assert state.flat().keys() == end.keys() and state.pos == 27
    for key in end:
        torch.testing.assert_close(state.flat()[key], end[key], rtol=0, atol=1e-10, msg=key)
    # The state keeps the fast weights at the slowest open chunk's start (24) and the tokens since.
    assert torch.equal(state.layers[0][TOKENS], x[:, 24:]) and state.layers[0][LEARN].all()


def test_batch_isolation():
    model = hope_attention()
    x = torch.randint(0, 32, (3, 19))
    y = model(x).logits
    singles = torch.cat([model(x[i:i + 1]).logits for i in range(3)])
    torch.testing.assert_close(singles, y, rtol=0, atol=1e-12)
    x2 = x.clone()
    x2[1] = torch.randint(0, 32, (19,))
    y2 = model(x2).logits
    assert torch.equal(y[[0, 2]], y2[[0, 2]])


def test_generation_learns_only_from_the_prompt():
    model = hope_attention()
    prompt = torch.randint(0, 32, (2, 10))
    ids, state = model.generate(prompt, 15, temperature=0)
    # Teacher forcing the generated ids with generated tokens excluded as targets gives the same greedy choices.
    learn = torch.zeros_like(ids, dtype=torch.bool)
    learn[:, :10] = True
    ref = lss_reference(model, ids, learn)
    assert torch.equal(ref[:, 9:-1].argmax(-1), ids[:, 10:])
    # Chunks whose targets were all generated write nothing: the fast weights at position 24
    # (after the generated chunks [16, 24)) equal those at 16.
    assert state.pos == 24
    at16 = model(ids[:, 10:16], state=model(ids[:, :10]).state, learn=False).state
    cms_keys = [(k, key) for k in range(2) for key in at16.layers[k] if key.startswith("cms.")]
    assert all(torch.equal(state.layers[k][key], at16.layers[k][key]) for k, key in cms_keys)
    # Learning from those tokens instead would have changed them.
    learned = model(ids[:, 16:24], state=at16).state
    assert not all(torch.equal(learned.layers[k][key], at16.layers[k][key]) for k, key in cms_keys)
