"""Self-modifying Titans (spec §5.3–5.9, D3–D12): fast path vs token-by-token reference, gradients, state."""

import math

import pytest
import torch
import torch.nn.functional as F

from nestlearn.errors import ConfigError
from nestlearn.layers.self_modifying import SelfModConfig, SelfModifyingTitans
from nestlearn.layers.self_modifying.naive import self_modifying_reference
from nestlearn.memory import memory_apply

DT = torch.float64
D = 8

# Small chunks (C_mem = 4, C_oth = 8) so that short sequences cross many boundaries of both grids.
ABLATIONS = {
    "default": {},
    "stopgrad": {"write_grad": "stopgrad"},
    "read_boundary": {"read": "boundary"},
    "dot": {"objective": "dot"},
    "gd": {"inner_rule": "gd"},
    "no_weight_decay": {"weight_decay": False},
    "eta_max": {"eta_max": 0.5},
    "momentum_off": {"momentum": "off"},
    "momentum_scalar": {"momentum": "scalar"},
    "adaptive_q": {"adaptive_q": True},
    "static_k": {"adaptive_k": False},
    "static_v": {"adaptive_v": False},
    "static_kv": {"adaptive_k": False, "adaptive_v": False},
    "conv_input": {"conv": "input"},
    "conv_none": {"conv": "none"},
    "conv_pointwise": {"conv_pointwise": True},
    "qkv_linear": {"qkv_activation": "none"},
    "no_output_gate": {"output_gate": "none"},
    "heads": {"heads": 2, "memory_hidden": 12},
    "gelu": {"activation": "gelu"},
    "equal_chunks": {"chunk_size_other": 4},
    "v_norm_none": {"v_norm": "none"},
    "paper_steps": {"momentum_form": "scaled", "eigen": "positive", "step_norm": "none", "write_bound": 0.0},
    "momentum_scaled": {"momentum_form": "scaled"},
    "positive": {"eigen": "positive"},
    "no_write_bound": {"write_bound": 0.0},
    "signed": {"eigen": "signed"},
    "signed_no_decay": {"eigen": "signed", "weight_decay": False},
    "step_bounded": {"step_norm": "bounded"},
    "step_implicit": {"step_norm": "implicit"},
    "retain_initial": {"retain": "initial"},
    "write_bound": {"write_bound": 0.3},
    "stable_stopgrad": {"momentum_form": "ema", "step_norm": "bounded", "retain": "initial", "eigen": "signed",
                        "write_bound": 0.5, "write_grad": "stopgrad"},
    "stable_boundary": {"momentum_form": "ema", "step_norm": "bounded", "retain": "initial", "read": "boundary"},
}
GRAD_CASES = ("default", "v_norm_none", "stopgrad", "read_boundary", "gd", "momentum_off", "adaptive_q", "conv_input",
              "conv_pointwise", "heads", "no_weight_decay", "paper_steps", "momentum_scaled", "signed",
              "step_bounded", "step_implicit", "retain_initial", "write_bound", "stable_stopgrad")


def make_layer(seed: int = 0, d: int = D, **kwargs) -> SelfModifyingTitans:
    """A float64 layer whose every parameter is perturbed, so no gate or memory sits at a special value."""
    # memory_out_init 0.1: memories clearly away from the identity, yet inside the regime where the
    # self-referential writes stay bounded over 100 tokens (larger ones diverged for some switches).
    base = {"chunk_size_memory": 4, "chunk_size_other": 8, "memory_out_init": 0.1}
    torch.manual_seed(seed)
    layer = SelfModifyingTitans(d, SelfModConfig(**{**base, **kwargs})).to(DT)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def make_x(batch: int, length: int, seed: int = 1, d: int = D, requires_grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, d, generator=g, dtype=DT).requires_grad_(requires_grad)


def max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_fast_equals_reference(name):
    layer = make_layer(**ABLATIONS[name])
    for length in (1, 7, 63, 100):
        x = make_x(2, length, seed=length)
        with torch.no_grad():
            y, state = layer(x)
            y_ref, state_ref = self_modifying_reference(layer, x)
        assert (y - y_ref).abs().max().item() < 1e-9
        assert max_diff(state, state_ref) < 1e-9
        # An absolute tolerance only means something while the recurrence stays bounded.
        assert max(t.abs().max().item() for t in state.values()) < 100


def test_fast_equals_reference_default_chunks():
    """The binding chunk sizes (16, 64) with a last partial chunk of both grids."""
    torch.manual_seed(0)
    layer = SelfModifyingTitans(D, SelfModConfig(memory_out_init=0.3)).to(DT)
    x = make_x(2, 100)
    with torch.no_grad():
        y, state = layer(x)
        y_ref, state_ref = self_modifying_reference(layer, x)
    assert (y - y_ref).abs().max().item() < 1e-9
    assert max_diff(state, state_ref) < 1e-9


def _loss(y: torch.Tensor, state: dict, seed: int = 7) -> torch.Tensor:
    """A random linear functional of the output and of every fast state (so state gradients count too)."""
    g = torch.Generator().manual_seed(seed)
    total = (y * torch.randn(y.shape, generator=g, dtype=DT)).sum()
    for key in sorted(state):
        total = total + (state[key] * torch.randn(state[key].shape, generator=g, dtype=DT)).sum()
    return total


@pytest.mark.parametrize("name", GRAD_CASES)
def test_gradients_match_reference(name):
    layer = make_layer(**ABLATIONS[name])
    x = make_x(2, 19, requires_grad=True)
    params = [x, *layer.parameters()]
    grads = torch.autograd.grad(_loss(*layer(x)), params, allow_unused=True)
    grads_ref = torch.autograd.grad(_loss(*self_modifying_reference(layer, x)), params, allow_unused=True)
    names = ["x", *(n for n, _ in layer.named_parameters())]
    for n, g, r in zip(names, grads, grads_ref):
        if g is None or r is None:
            # A parameter unused by one path must be unused (or zero) in the other as well.
            assert (g if g is not None else r if r is not None else torch.zeros(1)).abs().max() < 1e-12, n
            continue
        assert (g - r).abs().max().item() < 1e-9, n


class _Reference(torch.nn.Module):
    """The reference as a module, so ``functional_call`` can substitute the layer's parameters."""

    def __init__(self, layer: SelfModifyingTitans):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self_modifying_reference(self.layer, x)


@pytest.mark.parametrize("fn", ["fast", "reference"])
def test_gradcheck(fn):
    layer = make_layer(d=4, chunk_size_memory=2, chunk_size_other=4)
    names = ["initial.mem.W1", "initial.proj.W2", "initial.gate.W2"]
    params = dict(layer.named_parameters())

    module = layer if fn == "fast" else _Reference(layer)
    prefix = "" if fn == "fast" else "layer."

    def run(x, *tensors):
        values = {prefix + n: p for n, p in {**params, **dict(zip(names, tensors))}.items()}
        y, state = torch.func.functional_call(module, values, (x,))
        return y, state["mem.W2"], state["proj.W1"]

    x = make_x(2, 6, d=4, requires_grad=True)
    inputs = (x, *(params[n].detach().clone().requires_grad_(True) for n in names))
    assert torch.autograd.gradcheck(run, inputs, fast_mode=True)


def test_batch_equals_single_samples():
    layer = make_layer()
    x = make_x(3, 21, requires_grad=True)
    y, state = layer(x)
    grad = torch.autograd.grad(y.pow(2).sum(), x)[0]
    for i in range(3):
        xi = x[i:i + 1].detach().requires_grad_(True)
        yi, si = layer(xi)
        assert (yi - y[i:i + 1]).abs().max().item() < 1e-12
        assert max_diff(si, {k: v[i:i + 1] for k, v in state.items()}) < 1e-12
        gi = torch.autograd.grad(yi.pow(2).sum(), xi)[0]
        assert (gi - grad[i:i + 1]).abs().max().item() < 1e-12


def test_batch_isolation_bitwise():
    """Perturbing sample 1 leaves every output and state of samples 0 and 2 bit-identical (D2)."""
    layer = make_layer()
    x = make_x(3, 21)
    with torch.no_grad():
        y, state = layer(x)
        x2 = x.clone()
        x2[1] += torch.randn_like(x2[1])
        y2, state2 = layer(x2)
    for i in (0, 2):
        assert torch.equal(y[i], y2[i])
        assert all(torch.equal(state[k][i], state2[k][i]) for k in state)
    assert not torch.equal(y[1], y2[1])


@pytest.mark.parametrize("name", ["default", "stopgrad", "conv_input", "adaptive_q", "read_boundary"])
def test_segments_equal_one_call(name):
    """Cuts in the middle of chunks of both grids, and a one-token segment, carry state exactly (D18)."""
    layer = make_layer(**ABLATIONS[name])
    x = make_x(2, 70)
    with torch.no_grad():
        whole, end = layer(x)
        state, parts = layer.init_state(2, "cpu", DT), []
        for lo, hi in ((0, 5), (5, 13), (13, 40), (40, 41), (41, 70)):
            y, state = layer(x[:, lo:hi], state, pos=lo)
            parts.append(y)
    assert (torch.cat(parts, dim=1) - whole).abs().max().item() < 1e-12
    assert max_diff(state, end) < 1e-12


def _static_block(layer: SelfModifyingTitans, x: torch.Tensor) -> torch.Tensor:
    """The block with every memory frozen at its initial state: the same projections, no writes."""
    b, t, d = x.shape
    h, dh = layer.n_heads, layer.head_dim
    init = {g: dict(layer.initial[g]) for g in layer.groups}
    xh = x.view(b, t, h, dh).transpose(1, 2)
    n = len(layer.proj_names)
    gen = memory_apply(layer.specs["proj"], init["proj"], xh.repeat(1, n, 1, 1))
    parts = dict(zip(layer.proj_names, (o.transpose(1, 2).reshape(b, t, d) for o in gen.chunk(n, dim=1))))
    if layer.static is not None:
        parts.update(zip(layer.static_names, layer.static(x).chunk(len(layer.static_names), dim=-1)))
    raw = torch.cat([parts[name] for name in ("q", "k", "v")], dim=-1)
    conv = F.conv1d(F.pad(raw.transpose(1, 2), (3, 0)), layer.conv.weight, groups=3 * d).transpose(1, 2)
    q = F.silu(conv[..., :d]).view(b, t, h, dh).transpose(1, 2)  # k and v only feed the (zero) writes
    o = memory_apply(layer.specs["mem"], init["mem"], F.normalize(q, dim=-1))
    o = F.rms_norm(o, (dh,), layer.out_norm.weight, layer.out_norm.eps).transpose(1, 2).reshape(b, t, d)
    return layer.out(o * torch.sigmoid(layer.gate(x)))


def test_zero_inner_learning_rate_is_static():
    """η ≡ 0 and α ≡ 1 (gate biases at ∓∞): the block equals its static counterpart exactly."""
    layer = make_layer()
    x = make_x(2, 37)
    with torch.no_grad():
        y_dynamic, _ = layer(x)
        layer.gate_bias[0].fill_(-math.inf)
        layer.gate_bias[1].fill_(math.inf)
        y, state = layer(x)
        static = _static_block(layer, x)
    assert (y - static).abs().max().item() < 1e-12
    for g in layer.groups:
        for n in ("W1", "W2"):
            assert (state[f"{g}.{n}"] - layer.initial[g][n]).abs().max().item() == 0
    # With learning on, the same block differs clearly: the test above is not vacuous.
    assert (y_dynamic - static).abs().max().item() > 1e-3


def test_stopgrad_same_forward_and_no_gradient_to_write_only_parameters():
    torch.manual_seed(0)
    # With a static q the projection memories (k, v) act only through writes.
    diff = make_layer(adaptive_q=False)
    stop = make_layer(write_grad="stopgrad", adaptive_q=False)
    x = make_x(2, 30)
    y_diff, s_diff = diff(x)
    y_stop, s_stop = stop(x)
    assert (y_diff - y_stop).abs().max().item() < 1e-12
    assert max_diff(s_diff, s_stop) < 1e-12
    y_stop.pow(2).sum().backward()
    # D3: parameters acting only through writes get no outer gradient.
    for name in ("initial.proj.W1", "initial.proj.W2", "initial.gate.W1", "initial.gate.W2", "gate_bias",
                 "beta.weight", "beta.bias"):
        p = dict(stop.named_parameters())[name]
        assert p.grad is None or p.grad.abs().max().item() == 0, name
    # The conv feeds q (a read), so its q taps learn; its k and v taps do not.
    conv_grad = stop.conv.weight.grad
    assert conv_grad[:D].abs().max() > 0 and conv_grad[D:].abs().max().item() == 0
    assert stop.initial["mem"]["W1"].grad.abs().max() > 0
    assert stop.static.weight.grad.abs().max() > 0


def test_stopgrad_adaptive_q_learns_only_the_q_projection_memory():
    """With q from a projection memory (the default), the q memory's initial state feeds the reads and
    learns; the k and v memories still act only through writes (D3)."""
    torch.manual_seed(0)
    stop = make_layer(write_grad="stopgrad")
    assert stop.proj_names == ("k", "v", "q")
    stop(make_x(2, 30))[0].pow(2).sum().backward()
    h = stop.n_heads
    for n in ("W1", "W2"):
        grad = stop.initial["proj"][n].grad
        assert grad[:2 * h].abs().max().item() == 0 and grad[2 * h:].abs().max() > 0, n


def test_boundary_read_equals_intra_chunk_at_chunk_one():
    """D5: with C_mem = 1 the two readings of the output memory coincide."""
    x = make_x(2, 13)
    with torch.no_grad():
        y_intra, _ = make_layer(chunk_size_memory=1, chunk_size_other=4)(x)
        y_bound, _ = make_layer(chunk_size_memory=1, chunk_size_other=4, read="boundary")(x)
    assert (y_intra - y_bound).abs().max().item() < 1e-12


def test_state_layout():
    layer = make_layer(heads=2, adaptive_q=True)
    state = layer.init_state(3, "cpu", DT)
    assert state["proj.W1"].shape == (3, 3 * 2, 4, 4)  # k, v, q memories × 2 heads, (d/H, hidden/H)
    assert state["gate.W1"].shape == (3, 2 * 2, 1, 4)  # η, α scalar heads
    assert state["mem.W2_mom"].shape == (3, 2, 4, 4)
    assert state["conv"].shape == (3, 3, 3 * D)
    assert all(t.is_contiguous() for t in state.values())


@pytest.mark.parametrize("kwargs,field", [
    ({"chunk_size_memory": 16, "chunk_size_other": 24}, "model.selfmod.chunk_size_other"),
    ({"inner_rule": "sgd"}, "model.selfmod.inner_rule"),
    ({"momentum": "titans"}, "model.selfmod.momentum"),
    ({"eta_max": 0.0}, "model.selfmod.eta_max"),
    ({"conv": "both"}, "model.selfmod.conv"),
    ({"heads": 3}, "model.selfmod.heads"),
])
def test_bad_config(kwargs, field):
    with pytest.raises(ConfigError, match=field) as err:
        SelfModifyingTitans(D, SelfModConfig(**kwargs))
    if field.endswith("chunk_size_other"):
        assert "chunk_size_memory" in str(err.value)


# ---- the primitive's paths used by the layer: self-generated targets, state-only scans, shared keys ----

SCAN_SPECS = {
    "mlp_dgd_scaled": {"rule": "dgd", "momentum": "scaled"},
    "mlp_gd_none": {"rule": "gd", "momentum": "none"},
    "mlp_dot": {"objective": "dot", "rule": "dgd", "momentum": "scaled"},
    "mlp_scalar_head": {"rule": "dgd", "momentum": "scaled", "residual": False},
    "mlp_after_titans": {"rule": "gd", "momentum": "titans", "read": "after"},
    "mlp_stopgrad": {"rule": "dgd", "momentum": "scaled", "write_grad": "stopgrad"},
    "linear_dgd": {"kind": "linear", "rule": "dgd", "momentum": "scaled", "residual": False},
}


def _scan_setup(name: str, lead: tuple[int, ...] = (2, 3), length: int = 23, d: int = 6, hidden: int = 5, seed: int = 0):
    from nestlearn.memory import MemorySpec, init_memory_state

    kwargs = {"kind": "mlp", "chunk_size": 4, "read": "before", "residual": True, **SCAN_SPECS[name]}
    spec = MemorySpec(**kwargs)
    g = torch.Generator().manual_seed(seed)
    out = d if spec.residual else 1
    if spec.kind == "linear":
        initial = {"W": 0.3 * torch.randn(*lead[1:], d, d, generator=g, dtype=DT)}
    else:
        initial = {"W1": 0.3 * torch.randn(*lead[1:], out, hidden, generator=g, dtype=DT),
                   "W2": 0.3 * torch.randn(*lead[1:], hidden, d, generator=g, dtype=DT)}
    initial = {n: w.requires_grad_(True) for n, w in initial.items()}
    state = init_memory_state(spec, initial, lead[0])
    tokens = [F.normalize(torch.randn(*lead, length, d, generator=g, dtype=DT), dim=-1).requires_grad_(True)
              for _ in range(3)]
    gates = [torch.sigmoid(torch.randn(*lead, length, generator=g, dtype=DT)).requires_grad_(True) for _ in range(3)]
    if spec.momentum == "none":
        gates[2] = None
    return spec, initial, state, tokens, gates


def _explicit_targets_scan(spec, state, q, k, v, eta, alpha, beta, pos):
    """Self-generated targets the long way: one scan call per chunk with v̂ = M_b(v) built outside."""
    from nestlearn.memory import chunk_bounds, memory_scan

    names = spec.weight_names
    bounds = chunk_bounds(pos, q.shape[-2], spec.chunk_size)
    outs = []
    for start, end in bounds:
        at = pos + start
        b = {n: state[n] if at % spec.chunk_size == 0 else state[f"{n}_b"] for n in names}
        sl = slice(start, end)
        target = memory_apply(spec, b, v[..., sl, :])
        o, state = memory_scan(spec, state, q[..., sl, :], k[..., sl, :], target, eta[..., sl], alpha[..., sl],
                               None if beta is None else beta[..., sl], pos=at)
        outs.append(o)
    return torch.cat(outs, dim=-2), state


@pytest.mark.parametrize("name", list(SCAN_SPECS))
@pytest.mark.parametrize("pos", [0, 3])
def test_self_values_scan_equals_explicit_targets(name, pos):
    """memory_scan(self_values=True) equals scanning chunk by chunk with v̂ = M_b(v) given; gradients too."""
    from nestlearn.memory import memory_scan

    spec, initial, state, (q, k, v), (eta, alpha, beta) = _scan_setup(name)
    if pos % spec.chunk_size:
        # A call that starts inside a chunk: its boundary copy differs from the current weights.
        _, state = memory_scan(spec, state, q[..., :pos, :], k[..., :pos, :], v[..., :pos, :], eta[..., :pos],
                               alpha[..., :pos], None if beta is None else beta[..., :pos], self_values=True)
        q, k, v, eta, alpha = q[..., pos:, :], k[..., pos:, :], v[..., pos:, :], eta[..., pos:], alpha[..., pos:]
        beta = None if beta is None else beta[..., pos:]
    o, s = memory_scan(spec, state, q, k, v, eta, alpha, beta, pos=pos, self_values=True)
    o_ref, s_ref = _explicit_targets_scan(spec, state, q, k, v, eta, alpha, beta, pos)
    assert (o - o_ref).abs().max().item() < 1e-12
    assert max_diff(s, s_ref) < 1e-12
    none, s_only = memory_scan(spec, state, q, k, v, eta, alpha, beta, pos=pos, outputs=False, self_values=True)
    assert none is None and max_diff(s_only, s) < 1e-12
    leaves = [t for t in (*initial.values(), q, k, v, eta, alpha, beta) if t is not None]
    # The prefix's graph (pos > 0) is shared by both losses.
    grads = torch.autograd.grad(_loss(o, s), leaves, allow_unused=True, retain_graph=True)
    grads_ref = torch.autograd.grad(_loss(o_ref, s_ref), leaves, allow_unused=True)
    for g, r in zip(grads, grads_ref):
        assert (g is None) == (r is None)
        if g is not None:
            assert (g - r).abs().max().item() < 1e-10


@pytest.mark.parametrize("name", ["mlp_dgd_scaled", "mlp_scalar_head", "mlp_stopgrad"])
def test_shared_keys_broadcast_equals_repeated_memories(name):
    """G memories with one set of keys and gates: state (B, G, H, …) against keys (B, 1, H, …) equals the
    same memories laid out as (B, G·H, …) with the keys repeated (the layer's groups)."""
    from nestlearn.memory import memory_scan

    spec, _, state, (_, k, v), (eta, alpha, beta) = _scan_setup(name, lead=(2, 3, 2), length=13)
    shared = [t[:, :1] for t in (k, v, eta, alpha, beta) if t is not None]
    _, s = memory_scan(spec, state, shared[0], *shared, outputs=False, self_values=True)
    flat = {n: t.flatten(1, 2) for n, t in state.items()}
    rep = [t.repeat(1, 3, *[1] * (t.dim() - 2)).flatten(1, 2) for t in shared]
    _, s_flat = memory_scan(spec, flat, rep[0], *rep, outputs=False, self_values=True)
    assert max_diff({n: t.flatten(1, 2) for n, t in s.items()}, s_flat) < 1e-12


def test_hope_retains_toward_w0_by_default_and_configs_stored_without_the_field_load_as_trained():
    from nestlearn.models.lm import model_config_from_dict, model_config_to_dict

    new = model_config_from_dict({"family": "hope"})
    assert new.selfmod.retain == "initial" and new.selfmod.adaptive_q
    stored = model_config_to_dict(new)
    for field in ("retain", "adaptive_q"):  # a config written before the field existed
        del stored["selfmod"][field]
    old = model_config_from_dict(stored, stored=True).selfmod
    assert old.retain == "zero" and not old.adaptive_q
    user = model_config_from_dict(stored).selfmod  # a user's config takes today's defaults
    assert user.retain == "initial" and user.adaptive_q
