"""Linear attention, DeltaNet and Gated DeltaNet layers: the memory they carry follows their update rules."""

import torch

from nestlearn.layers.linear_memory import deltanet_layer, gated_deltanet_layer, linear_attention_layer

DT = torch.float64


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
    layer, x, q, k, v, *_ = layer_inputs(linear_attention_layer(16, 2, chunk_size=4))
    check_final_memory(layer, x, (v.unsqueeze(-1) * k.unsqueeze(-2)).sum(dim=2))


def test_deltanet_and_gated_deltanet_follow_the_delta_rule():
    for make, gated in ((deltanet_layer, False), (gated_deltanet_layer, True)):
        layer, x, q, k, v, eta, alpha = layer_inputs(make(16, 2, chunk_size=4))
        w = torch.zeros(2, 2, 8, 8, dtype=DT)
        for t in range(x.shape[1]):
            kt, vt = k[:, :, t, :, None], v[:, :, t, :, None]
            a = alpha[:, :, t, None, None] if gated else 1.0
            e = eta[:, :, t, None, None]
            w = w @ (a * torch.eye(8, dtype=DT) - e * kt @ kt.mT) + e * vt @ kt.mT
        check_final_memory(layer, x, w)
