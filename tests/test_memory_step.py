"""The one-token memory path (memory_step) against the chunked scan, float64: outputs, states, gradients."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from nestlearn.memory import MemorySpec, init_memory_state, memory_scan
from nestlearn.memory.step import memory_forward, memory_step

DT = torch.float64
B, H, D, HID, T = 2, 2, 5, 6, 37

# Every switch of the spec reaches memory_step through one of these; chunk sizes 8 and 5 do not divide 37.
SPECS = {
    "linear_dot_gd": dict(kind="linear", objective="dot"),
    "deltanet": dict(kind="linear", objective="l2"),
    "gated_deltanet": dict(kind="linear", objective="l2", rule="dgd"),
    "gated_deltanet_yang_signed": dict(kind="linear", objective="l2", rule="dgd", gate_form="yang", eigen="signed"),
    "mlp_yang_momentum": dict(rule="dgd", gate_form="yang", momentum="titans", step_norm="bounded"),
    "titans": dict(momentum="titans"),
    "scaled_before": dict(momentum="scaled", read="before", rule="dgd", activation="gelu"),
    "ema_boundary": dict(momentum="ema", read="boundary", rule="dgd"),
    "selfmod_default": dict(momentum="ema", read="before", rule="dgd", eigen="signed", step_norm="bounded",
                            write_bound=0.5),
    "implicit_initial": dict(step_norm="implicit", retain="initial", rule="dgd", residual=False),
    "stopgrad": dict(momentum="titans", write_grad="stopgrad", rule="dgd", read="before"),
    "cms_level": dict(kind="swiglu", read="boundary", residual=False, step_norm="bounded", curvature="gain",
                      write_bound=0.5),
}


def make(spec: MemorySpec, seed: int = 0, self_values: bool = False, batch: int = B):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=DT) * scale

    if spec.kind == "linear":
        init = {"W": rnd(H, D, D, scale=0.3)}
    else:
        rows = 2 * HID if spec.kind == "swiglu" else HID
        init = {"W1": rnd(H, D, HID, scale=0.3), "W2": rnd(H, rows, D, scale=0.3)}
    k = F.normalize(rnd(batch, H, T, D), dim=-1)
    tokens = (rnd(batch, H, T, D), k, rnd(batch, H, T, D), 0.5 * torch.rand(batch, H, T, generator=g, dtype=DT),
              0.8 + 0.2 * torch.rand(batch, H, T, generator=g, dtype=DT),
              None if spec.momentum == "none" else torch.rand(batch, H, T, generator=g, dtype=DT))
    anchor = {n: w + 0.1 for n, w in init.items()} if spec.retain == "initial" else None
    return init, tokens, anchor


def part(tensors, lo, hi):
    """Tokens lo..hi−1 of (q, k, v, eta, alpha, beta): vectors on axis −2, gates (one axis fewer) on −1."""
    dim = tensors[0].dim()
    return [None if x is None else (x[..., lo:hi, :] if x.dim() == dim else x[..., lo:hi]) for x in tensors]


def token(tensors, t):
    return part(tensors, t, t + 1)


def decode(fn, spec, state, tokens, anchor, start, stop, **kw):
    outs = []
    for t in range(start, stop):
        out, state = fn(spec, state, *token(tokens, t), pos=t, anchor=anchor, **kw)
        outs.append(out)
    return torch.cat(outs, dim=-2), state


def assert_states_equal(a, b, tol=1e-12):
    assert set(a) == set(b)
    for n in a:
        assert (a[n] - b[n]).abs().max().item() < tol, n


@pytest.mark.parametrize("name,chunk", list(itertools.product(SPECS, (8, 5))))
def test_decoding_token_by_token_equals_one_chunked_scan(name, chunk):
    spec = MemorySpec(chunk_size=chunk, **SPECS[name])
    init, tokens, anchor = make(spec)
    state = init_memory_state(spec, init, B)
    whole, end = memory_scan(spec, state, *tokens, pos=0, anchor=anchor)
    steps, stepped = decode(memory_step, spec, state, tokens, anchor, 0, T)
    assert (steps - whole).abs().max().item() < 1e-12
    assert_states_equal(stepped, end)
    # A prefix read in chunks (cut inside a chunk), then decoding.
    _, mid = memory_scan(spec, state, *part(tokens, 0, 11), pos=0, anchor=anchor)
    rest, after = decode(memory_forward, spec, mid, tokens, anchor, 11, T)
    assert (rest - whole[..., 11:, :]).abs().max().item() < 1e-12
    assert_states_equal(after, end)


def test_self_valued_grouped_step_equals_scan():
    """The self-modifying layer's use: G memories (B, G, H, ...) sharing keys (B, 1, H, ...), targets M_b(v)."""
    spec = MemorySpec(chunk_size=4, **SPECS["selfmod_default"])
    init, tokens, _ = make(spec)
    state = {n: t.unsqueeze(1).expand(B, 3, *t.shape[1:]).clone() for n, t in init_memory_state(spec, init, B).items()}
    state = {n: t + 0.05 * torch.randn_like(t) for n, t in state.items()}
    q, k, v, eta, alpha, beta = (None if x is None else x.unsqueeze(1) for x in tokens)
    v = k.roll(1, dims=-2)  # self-valued targets take inputs of d_in
    grouped = (q, k, v, eta, alpha, beta)
    whole, end = memory_scan(spec, state, *grouped, pos=0, self_values=True)
    steps, stepped = decode(memory_step, spec, state, grouped, None, 0, T, self_values=True)
    assert (steps - whole).abs().max().item() < 1e-12
    assert_states_equal(stepped, end)


@pytest.mark.parametrize("name", ["titans", "selfmod_default"])
def test_one_token_skips_and_gradients(name):
    """outputs=False / final_state=False as in memory_scan, and the same outer gradients."""
    spec = MemorySpec(chunk_size=4, **SPECS[name])
    init, tokens, _ = make(spec, batch=1)
    init = {n: w.requires_grad_() for n, w in init.items()}
    state = init_memory_state(spec, init, 1)
    one = token(tokens, 0)
    _, after = memory_scan(spec, state, *one, pos=3, outputs=False)
    _, stepped = memory_step(spec, state, *one, pos=3, outputs=False)
    assert_states_equal(stepped, after)
    out, empty = memory_step(spec, state, *one, pos=3, final_state=False)
    assert empty == {}
    grads = [torch.autograd.grad(fn(spec, state, *one, pos=3)[0].sum(), list(init.values()))
             for fn in (memory_scan, memory_step)]
    for a, b in zip(*grads):
        assert (a - b).abs().max().item() < 1e-12
    with pytest.raises(ValueError, match="one token"):
        memory_step(spec, state, tokens[0][..., :2, :], *one[1:], pos=0)
