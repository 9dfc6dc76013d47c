"""Titans layer and memory-family models: state carry, batch isolation, training through CausalLM."""

import pytest
import torch

from nestlearn.layers.attention import CausalSelfAttention
from nestlearn.layers.titans import MemoryLayer, causal_depthwise_conv
from nestlearn.memory import MemorySpec
from nestlearn.models import CausalLM
from nestlearn.models.lm import model_config_from_dict

DT = torch.float64
FAMILIES = ["titans", "deltanet", "gated_deltanet", "linear_attention", "titans_mag", "titans_mal", "titans_mac"]


def tiny(family, **kw):
    cfg = {"family": family, "vocab_size": 40, "d_model": 16, "n_layers": 2, "n_heads": 2, "chunk_size": 4, **kw}
    if family in ("titans_mag", "titans_mal", "titans_mac"):
        cfg = {"window": 5, "n_persistent": 2, **cfg}
    return model_config_from_dict(cfg)


def assert_close(a, b, tol=1e-10):
    assert (a - b).abs().max().item() < tol


def titans_layer():
    torch.manual_seed(0)
    spec = MemorySpec(kind="mlp", rule="dgd", momentum="titans", chunk_size=4)
    return MemoryLayer(16, 2, spec, memory_out_init=0.3).to(DT)


def test_conv_with_cache_equals_one_pass_and_conv1d():
    x, w = torch.randn(2, 9, 6, dtype=DT, requires_grad=True), torch.randn(6, 1, 4, dtype=DT, requires_grad=True)
    full, _ = causal_depthwise_conv(x, w, None)
    ref = torch.nn.functional.conv1d(torch.nn.functional.pad(x.mT, (3, 0)), w, groups=6).mT
    assert_close(full, ref)
    assert torch.autograd.gradcheck(lambda x, w: causal_depthwise_conv(x, w, None)[0], (x, w))
    a, cache = causal_depthwise_conv(x[:, :2], w, None)
    b, _ = causal_depthwise_conv(x[:, 2:], w, cache)
    assert_close(torch.cat((a, b), dim=1), full)


def test_sliding_window_attention_with_prefix_and_cache():
    torch.manual_seed(0)
    attn = CausalSelfAttention(16, 2, window=3).to(DT)
    x = torch.randn(2, 10, 16, dtype=DT)
    prefix = (torch.randn(1, 2, 2, 8, dtype=DT), torch.randn(1, 2, 2, 8, dtype=DT))
    full, _ = attn(x, None, 0, prefix=prefix)
    a, cache = attn(x[:, :4], None, 0, prefix=prefix)
    assert cache["k"].shape[2] == 2
    b, _ = attn(x[:, 4:], cache, 4, prefix=prefix)
    assert_close(torch.cat((a, b), dim=1), full)
    full_attn = CausalSelfAttention(16, 2).to(DT)
    full_attn.load_state_dict(attn.state_dict())
    for i in (2, 6, 9):
        ref, _ = full_attn(x[:, i - 2:i + 1], None, i - 2, prefix=prefix)
        assert_close(full[:, i], ref[:, -1])


def test_layer_segments_equal_one_call():
    layer = titans_layer()
    x = torch.randn(3, 19, 16, dtype=DT)
    full, st_full = layer(x)
    state, pieces, start = layer.init_state(3, "cpu", DT), [], 0
    for end in (3, 10, 19):
        y, state = layer(x[:, start:end], state, start)
        pieces.append(y)
        start = end
    assert_close(torch.cat(pieces, dim=1), full)
    for name in st_full:
        assert_close(state[name], st_full[name])


def test_layer_with_reference_scan_gives_same_outputs(monkeypatch):
    import nestlearn.layers.titans as titans_module
    from nestlearn.memory import memory_scan_reference

    layer = titans_layer()
    x = torch.randn(2, 9, 16, dtype=DT)
    fast, _ = layer(x)
    monkeypatch.setattr(titans_module, "memory_forward", memory_scan_reference)
    reference, _ = layer(x)
    assert_close(fast, reference)


def test_layer_batch_isolation():
    layer = titans_layer()
    x = torch.randn(3, 11, 16, dtype=DT)
    y, _ = layer(x)
    x2 = x.clone()
    x2[1] += 1.0
    y2, _ = layer(x2)
    assert torch.equal(y[0], y2[0]) and torch.equal(y[2], y2[2])
    for i in range(3):
        assert_close(layer(x[i:i + 1])[0], y[i:i + 1])


def test_layer_gradients_reach_initial_memory_gates_and_conv():
    layer = titans_layer().float()
    y, _ = layer(torch.randn(2, 10, 16))
    y.square().sum().backward()
    for name in ("initial.W1", "initial.W2", "gates.weight", "gates.bias", "conv.weight", "qkv.weight"):
        assert layer.get_parameter(name).grad.abs().sum() > 0, name


@pytest.mark.parametrize("family", FAMILIES)
def test_model_segments_and_batch(family):
    torch.manual_seed(0)
    model = CausalLM(tiny(family)).to(DT)
    tokens = torch.randint(0, 40, (2, 14))
    full = model(tokens)
    state, logits = None, []
    for sl in (slice(0, 5), slice(5, 6), slice(6, 14)):
        out = model(tokens[:, sl], state=state)
        logits.append(out.logits)
        state = out.state
    assert_close(torch.cat(logits, dim=1), full.logits)
    assert_close(model(tokens[1:]).logits, full.logits[1:])
    assert all(v.shape[0] == 2 for s in state.layers for v in s.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_model_state_saves_with_safetensors(family, tmp_path):
    from safetensors.torch import load_file, save_file

    model = CausalLM(tiny(family))
    tokens = torch.randint(0, 40, (2, 6))
    for i, state in enumerate((model.init_state(2), model(tokens).state, model(tokens[:, :4]).state)):
        flat = {k: v.detach().contiguous() for k, v in state.flat().items()}
        save_file(flat, tmp_path / f"{i}.safetensors")
        assert load_file(tmp_path / f"{i}.safetensors").keys() == flat.keys()


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_learns_repeated_batch(family, fit_batch):
    torch.manual_seed(0)
    model = CausalLM(tiny(family, d_model=32))
    tokens = torch.randint(0, 40, (4, 33))
    losses = fit_batch(model, tokens, 25, lr=3e-3)
    assert losses[-1] < 0.7 * losses[0]
