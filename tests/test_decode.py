"""Decoding one token at a time (the one-token paths) equals one chunked forward, for every family (float64).

A one-token call takes the direct paths (nestlearn.memory.step for the Titans, linear and
self-modifying memories; the CMS level's single shared read/write product without gradients). Each
token's write takes its gradient at the state's boundary copy, so a stream decoded token by token,
from a fresh state or after a prefix read in one call, gives the outputs and the state of one call
over the whole stream, with chunk sizes that do not divide its length (37).
"""

import dataclasses

import pytest
import torch

from nestlearn.layers.cms import CMS, CMSConfig
from nestlearn.layers.self_modifying import SelfModConfig, SelfModifyingTitans
from nestlearn.models import CausalLM
from nestlearn.models.lm import families, model_config_from_dict

DT = torch.float64
VOCAB, T, PREFIX = 32, 37, 11

# Small settings for whichever of these fields a family has: chunk sizes 8 and 4 do not divide T = 37.
SMALL = {"n_heads": 2, "chunk_size": 8, "window": 5, "n_persistent": 2, "cms": {"chunk_sizes": [16, 4]},
         "selfmod": {"chunk_size_memory": 4, "chunk_size_other": 8}}


def tiny(family: str) -> CausalLM:
    fields = {f.name for f in dataclasses.fields(families()[family])}
    torch.manual_seed(0)
    cfg = {"family": family, "vocab_size": VOCAB, "d_model": 16, "n_layers": 2, "max_seq_len": 64,
           **{k: v for k, v in SMALL.items() if k in fields}}
    return CausalLM(model_config_from_dict(cfg)).to(DT).eval()


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-11) -> bool:
    return a.shape == b.shape and (a - b).abs().max().item() < tol


def assert_same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        assert close(a[name], b[name]), name


@pytest.mark.parametrize("family", sorted(families()))
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


def assert_layer_decodes(layer: torch.nn.Module, d: int) -> None:
    """A prefix read in one call, then one token per call, equals one call over the whole input."""
    x = torch.randn(2, T, d, generator=torch.Generator().manual_seed(1), dtype=DT)
    with torch.no_grad():
        whole, end = layer(x)
        _, state = layer(x[:, :PREFIX])
        outs = []
        for t in range(PREFIX, T):
            y, state = layer(x[:, t:t + 1], state, pos=t)
            outs.append(y)
    assert close(torch.cat(outs, dim=1), whole[:, PREFIX:])
    assert_same_state(state, end)


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
    assert_layer_decodes(SelfModifyingTitans(8, cfg).to(DT), 8)


CMS_VARIANTS = {
    "sequential": {},
    "nested_swiglu": {"variant": "nested", "level_form": "swiglu"},
    "independent_fast_first": {"variant": "independent", "order": "fast_first", "step_norm": "none"},
}


@pytest.mark.parametrize("name", sorted(CMS_VARIANTS))
def test_cms_decode_equals_one_call(name):
    torch.manual_seed(0)
    assert_layer_decodes(CMS(8, CMSConfig(chunk_sizes=(16, 8, 4), hidden_mult=2, eta_max=0.5,
                                          **CMS_VARIANTS[name])).to(DT), 8)
