"""Linear attention, DeltaNet and Gated DeltaNet layers: the memory they carry follows their update rules."""

import torch

from nestlearn.models.linear_memory import DeltaNetConfig, GatedDeltaNetConfig, LinearAttentionConfig

DT = torch.float64


def layer_of(config_class, **fields):
    """The memory layer a model family builds (d = 16, two heads, chunk 4)."""
    return config_class(d_model=16, n_heads=2, chunk_size=4, **fields).memory_layer()


def layer_inputs(layer, length=9, seed=0):
    torch.manual_seed(seed)
    layer = layer.to(DT)
    x = torch.randn(2, length, 16, dtype=DT)
    q, k, v, _ = layer.features(x, None)
    eta, alpha, _ = layer.gate_values(x)
    return layer, x, q, k, v, eta, alpha


def check_final_memory(layer, x, expected):
    _, state = layer(x)
    assert (state["mem.W"] - expected).abs().max() < 1e-10


def test_linear_attention_memory_is_sum_of_outer_products():
    layer, x, q, k, v, *_ = layer_inputs(layer_of(LinearAttentionConfig))
    check_final_memory(layer, x, (v.unsqueeze(-1) * k.unsqueeze(-2)).sum(dim=2))


def test_deltanet_and_gated_deltanet_follow_the_delta_rule():
    """DeltaNet, Gated DeltaNet as published (Yang et al.: α on the whole transition, the default) and
    with ``gate_form="eq92"`` (α on the identity only, NL-L Eq 92)."""
    eye = torch.eye(8, dtype=DT)
    cases = {"deltanet": (layer_of(DeltaNetConfig), lambda w, a, e, kt: w @ (eye - e * kt @ kt.mT)),
             "yang": (layer_of(GatedDeltaNetConfig), lambda w, a, e, kt: a * w @ (eye - e * kt @ kt.mT)),
             "eq92": (layer_of(GatedDeltaNetConfig, gate_form="eq92"), lambda w, a, e, kt: w @ (a * eye - e * kt @ kt.mT))}
    for layer, transition in cases.values():
        layer, x, q, k, v, eta, alpha = layer_inputs(layer)
        w = torch.zeros(2, 2, 8, 8, dtype=DT)
        for t in range(x.shape[1]):
            kt, vt = k[:, :, t, :, None], v[:, :, t, :, None]
            a = 1.0 if alpha is None else alpha[:, :, t, None, None]
            e = eta[:, :, t, None, None]
            w = transition(w, a, e, kt) + e * vt @ kt.mT
        check_final_memory(layer, x, w)
