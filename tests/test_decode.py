"""Decoding one token at a time (the one-token paths) equals one chunked forward, for every family (float64).

A one-token call takes the direct paths (nestlearn.memory.step for the Titans, linear and
self-modifying memories; the CMS level's single shared read/write product without gradients). Each
token's write takes its gradient at the state's boundary copy, so a stream decoded token by token,
from a fresh state or after a prefix read in one call, gives the outputs and the state of one call
over the whole stream, with chunk sizes that do not divide its length (37).
"""

import pytest
import torch

from nestlearn.layers.cms import CMS, CMSConfig
from nestlearn.layers.self_modifying import SelfModConfig, SelfModifyingTitans
from nestlearn.models import CausalLM
from nestlearn.models.lm import families, model_config_from_dict

DT = torch.float64
VOCAB, T, PREFIX = 32, 37, 11

TINY = {
    "transformer": {"n_heads": 2},
    "lstm": {},
    "hope": {"selfmod": {"chunk_size_memory": 4, "chunk_size_other": 8}, "cms": {"chunk_sizes": [16, 4]}},
    "hope_attention": {"n_heads": 2, "cms": {"chunk_sizes": [16, 4]}},
    **{f: {"n_heads": 2, "chunk_size": 8} for f in ("titans", "linear_attention", "deltanet", "gated_deltanet")},
    **{f: {"n_heads": 2, "chunk_size": 8, "window": 5, "n_persistent": 2} for f in ("titans_mag", "titans_mal",
                                                                                    "titans_mac")},
}


def tiny(family: str) -> CausalLM:
    torch.manual_seed(0)
    cfg = {"family": family, "vocab_size": VOCAB, "d_model": 16, "n_layers": 2, "max_seq_len": 64, **TINY[family]}
    return CausalLM(model_config_from_dict(cfg)).to(DT).eval()


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-11) -> bool:
    return a.shape == b.shape and (a - b).abs().max().item() < tol


def assert_same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        assert close(a[name], b[name]), name


def test_every_family_is_covered():
    assert set(TINY) == set(families())


@pytest.mark.parametrize("family", sorted(TINY))
def test_token_by_token_decode_equals_one_forward(family):
    model = tiny(family)
    tokens = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(tokens)
        for start in (0, PREFIX):
            state = model(tokens[:, :start]).state if start else model.init_state(2)
            logits = []
            for t in range(start, T):
                out = model(tokens[:, t:t + 1], state=state)
                logits.append(out.logits)
                state = out.state
            assert close(torch.cat(logits, dim=1), whole.logits[:, start:])
            assert state.pos == T
            assert_same_state(state.flat(), whole.state.flat())


def decode_layer(layer, x: torch.Tensor, state: dict, start: int) -> tuple[torch.Tensor, dict]:
    outs = []
    for t in range(start, x.shape[1]):
        y, state = layer(x[:, t:t + 1], state, pos=t)
        outs.append(y)
    return torch.cat(outs, dim=1), state


SELFMOD = {
    "default": {},
    "stopgrad_initial": {"write_grad": "stopgrad", "retain": "initial"},
    "boundary_gd_scaled": {"read": "boundary", "inner_rule": "gd", "momentum_form": "scaled"},
    "no_momentum_no_decay": {"momentum": "off", "weight_decay": False, "step_norm": "implicit"},
    "adaptive_q_conv_input_heads": {"adaptive_q": True, "conv": "input", "heads": 2, "memory_hidden": 12},
    "static_kv_dot": {"adaptive_k": False, "adaptive_v": False, "objective": "dot", "momentum": "scalar"},
}


@pytest.mark.parametrize("name", sorted(SELFMOD))
def test_self_modifying_decode_equals_one_call(name):
    torch.manual_seed(0)
    cfg = SelfModConfig(chunk_size_memory=4, chunk_size_other=8, memory_out_init=0.1, **SELFMOD[name])
    layer = SelfModifyingTitans(8, cfg).to(DT)
    x = torch.randn(2, T, 8, generator=torch.Generator().manual_seed(1), dtype=DT)
    with torch.no_grad():
        whole, end = layer(x)
        _, mid = layer(x[:, :PREFIX])
        rest, after = decode_layer(layer, x, mid, PREFIX)
    assert close(rest, whole[:, PREFIX:])
    assert_same_state(after, end)


CMS_VARIANTS = {
    "sequential": {},
    "nested_swiglu": {"variant": "nested", "level_form": "swiglu"},
    "independent_fast_first": {"variant": "independent", "order": "fast_first", "step_norm": "none"},
}


@pytest.mark.parametrize("name", sorted(CMS_VARIANTS))
def test_cms_decode_equals_one_call(name):
    torch.manual_seed(0)
    cms = CMS(8, CMSConfig(chunk_sizes=(16, 8, 4), hidden_mult=2, eta_max=0.5, **CMS_VARIANTS[name])).to(DT)
    x = torch.randn(2, T, 8, generator=torch.Generator().manual_seed(1), dtype=DT)
    with torch.no_grad():
        whole, end = cms(x)
        _, mid = cms(x[:, :PREFIX])
        rest, after = decode_layer(cms, x, mid, PREFIX)
    assert close(rest, whole[:, PREFIX:])
    assert_same_state(after, end)
