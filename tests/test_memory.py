"""The associative-memory primitive: fast path vs token-by-token reference, special cases, gradients."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from nestlearn.errors import ConfigError
from nestlearn.memory import (
    MemorySpec,
    boundary_factors,
    compile_chunk_step,
    init_memory_state,
    inner_loss,
    memory_apply,
    memory_scan,
    memory_scan_reference,
    segment_products,
)

DT = torch.float64
B, H, D = 2, 2, 5  # the sizes of the inputs fixture (memory_inputs)

# The brief's inner optimisers: plain GD, GD with Titans momentum [T Eqs 13-14], DGD (D6).
OPTIMIZERS = {"gd": dict(rule="gd", momentum="none"), "momentum": dict(rule="gd", momentum="titans"),
              "dgd": dict(rule="dgd", momentum="none")}


@pytest.fixture
def make_inputs(memory_inputs):
    """``make(spec, length, seed=0, **sizes)``: inputs for ``spec`` (its momentum decides β), η < 0.5."""

    def make(spec: MemorySpec, length: int, seed: int = 0, **sizes):
        return memory_inputs(spec.kind, length, spec.momentum != "none", seed, eta_scale=0.5, **sizes)

    return make


def run(fn, spec, init, q, k, v, eta, alpha, beta, pos=0):
    state = init_memory_state(spec, init, q.shape[0])
    return fn(spec, state, q, k, v, eta, alpha, beta, pos=pos)


def assert_close(a, b, tol=1e-9):
    assert (a - b).abs().max().item() < tol


def assert_runs_close(a, b):
    """Two (outputs, state, gradients) triples agree in every tensor."""
    assert_close(a[0], b[0])
    for name in a[1]:
        assert_close(a[1][name], b[1][name])
    for x, y in zip(a[2], b[2]):
        assert_close(x, y)


@pytest.mark.parametrize("kind,objective,opt", list(itertools.product(("linear", "mlp"), ("l2", "dot"), OPTIMIZERS)))
def test_fast_equals_reference(kind, objective, opt, make_inputs):
    for length in (1, 7, 63, 100):
        spec = MemorySpec(kind=kind, objective=objective, chunk_size=16, **OPTIMIZERS[opt])
        inputs = make_inputs(spec, length, seed=length)
        out_f, st_f = run(memory_scan, spec, *inputs)
        out_r, st_r = run(memory_scan_reference, spec, *inputs)
        assert_close(out_f, out_r)
        assert set(st_f) == set(st_r) == set(spec.state_names)
        for name in st_f:
            assert_close(st_f[name], st_r[name])


@pytest.mark.parametrize("momentum,read,rule", list(itertools.product(("titans", "scaled"), ("after", "before", "boundary"),
                                                                      ("gd", "dgd"))))
def test_fast_equals_reference_momentum_forms_and_reads(momentum, read, rule, make_inputs):
    for kind in ("linear", "mlp"):
        spec = MemorySpec(kind=kind, rule=rule, momentum=momentum, read=read, chunk_size=8, activation="gelu")
        inputs = make_inputs(spec, 21)
        out_f, st_f = run(memory_scan, spec, *inputs, pos=5)
        out_r, st_r = run(memory_scan_reference, spec, *inputs, pos=5)
        assert_close(out_f, out_r)
        for name in st_f:
            assert_close(st_f[name], st_r[name])


@pytest.mark.parametrize("rule,momentum,read", [("gd", "none", "boundary"), ("gd", "titans", "after"),
                                                 ("dgd", "none", "before"), ("dgd", "ema", "boundary")])
@pytest.mark.parametrize("step_norm,curvature,bound", [("none", "input", 0.0), ("bounded", "gain", 0.0),
                                                       ("implicit", "gain", 0.3), ("bounded", "input", 0.3)])
def test_swiglu_kind_and_gain_curvature_equal_reference(rule, momentum, read, step_norm, curvature, bound, make_inputs):
    """The gated MLP (a CMS level's SwiGLU form) and the gain-aware step, outputs, states and gradients."""
    spec = MemorySpec(kind="swiglu", rule=rule, momentum=momentum, read=read, chunk_size=4, residual=False,
                      step_norm=step_norm, curvature=curvature, write_bound=bound)
    inputs = make_inputs(spec, 11, requires_grad=True, mlp_scale=0.8)
    leaves = [t for t in (*inputs[0].values(), *inputs[1:]) if t is not None]
    weight = torch.randn(B, H, 11, D, generator=torch.Generator().manual_seed(3), dtype=DT)
    results = []
    for fn in (memory_scan, memory_scan_reference):
        out, state = run(fn, spec, *inputs, pos=2)
        loss = (out * weight).sum() + sum(s.square().sum() for s in state.values())
        results.append((out, state, torch.autograd.grad(loss, leaves)))
    assert_runs_close(*results)


def test_gain_curvature_divides_the_first_layer_step_by_its_gain(make_inputs):
    """With a large W₁ the gain-aware bounded step of W₂ is smaller than the input-only one; W₁'s is unchanged."""
    steps = {}
    for curvature in ("input", "gain"):
        spec = MemorySpec(kind="mlp", chunk_size=8, read="boundary", step_norm="bounded", curvature=curvature)
        init, q, k, v, eta, alpha, beta = make_inputs(spec, 8)
        init = {"W1": init["W1"] * 20, "W2": init["W2"]}
        _, state = run(memory_scan, spec, init, q, k, v, eta, None, None)
        steps[curvature] = {n: (state[n] - init[n]).norm().item() for n in ("W1", "W2")}
    assert steps["gain"]["W2"] < 0.2 * steps["input"]["W2"]
    assert steps["gain"]["W1"] == pytest.approx(steps["input"]["W1"], rel=1e-12)


def test_chunk_size_one_is_token_by_token_equations(make_inputs):
    """C = 1: the gradient of token t is taken at M_{t-1}; written out by hand for the MLP + DGD + momentum."""
    spec = MemorySpec(kind="mlp", rule="dgd", momentum="scaled", chunk_size=1)
    init, q, k, v, eta, alpha, beta = make_inputs(spec, 9)
    out, _ = run(memory_scan, spec, init, q, k, v, eta, alpha, beta)
    w1, w2 = init["W1"].expand(B, -1, -1, -1), init["W2"].expand(B, -1, -1, -1)
    s1, s2 = torch.zeros_like(w1), torch.zeros_like(w2)
    eye = torch.eye(D, dtype=DT)
    for t in range(9):
        kt, vt = k[..., t, :, None], v[..., t, :, None]
        e_, a_, b_ = eta[..., t, None, None], alpha[..., t, None, None], beta[..., t, None, None]
        pre = w2 @ kt
        err = kt + w1 @ F.silu(pre) - vt
        s1 = b_ * s1 + err @ F.silu(pre).mT
        s2 = b_ * s2 + ((w1.mT @ err) * torch.sigmoid(pre) * (1 + pre * (1 - torch.sigmoid(pre)))) @ kt.mT
        w1, w2 = a_ * w1 - e_ * s1, w2 @ (a_ * eye - e_ * kt @ kt.mT) - e_ * s2
        qt = q[..., t, :, None]
        assert_close(out[..., t, :], (qt + w1 @ F.silu(w2 @ qt)).squeeze(-1))


def test_boundary_read_is_the_state_at_the_last_chunk_boundary(make_inputs):
    """read="boundary": every token of a chunk reads the state the chunk started from (a stream
    carried in from mid-chunk reads its boundary copy), written out with the "after" read's states."""
    after = MemorySpec(kind="mlp", rule="dgd", momentum="ema", chunk_size=4)
    spec = MemorySpec(kind="mlp", rule="dgd", momentum="ema", chunk_size=4, read="boundary")
    init, q, k, v, eta, alpha, beta = make_inputs(spec, 11)
    out, _ = run(memory_scan, spec, init, q, k, v, eta, alpha, beta, pos=2)
    state = init_memory_state(after, init, B)
    for t in range(11):
        if (2 + t) % 4 == 0:
            boundary = {n: state[n] for n in after.weight_names}
        elif t == 0:
            boundary = {n: state[f"{n}_b"] for n in after.weight_names}
        assert_close(out[..., t:t + 1, :], memory_apply(after, boundary, q[..., t:t + 1, :]), 1e-12)
        _, state = memory_scan(after, state, *(x[..., t:t + 1, :] for x in (q, k, v)),
                               *(g[..., t:t + 1] for g in (eta, alpha, beta)), pos=2 + t)


def linear_spec(**kw):
    return MemorySpec(kind="linear", **kw)


def test_linear_dot_gd_is_linear_attention(make_inputs):
    """[NL-L Eqs 15-18]: M_t = M_{t-1} + v_t k_tᵀ, y_t = M_t q_t, i.e. a causal cumsum."""
    spec = linear_spec(objective="dot", rule="gd", chunk_size=4)
    init, q, k, v, *_ = make_inputs(spec, 11)
    init = {"W": torch.zeros_like(init["W"])}
    out, _ = run(memory_scan, spec, init, q, k, v, torch.ones(B, H, 11, dtype=DT), None, None)
    expected = torch.cumsum(v.unsqueeze(-1) * k.unsqueeze(-2), dim=-3) @ q.unsqueeze(-1)
    assert_close(out, expected.squeeze(-1))


def delta_rule(init, k, v, eta, alpha=None):
    """W_t = α_t W_{t-1} − η_t (W_{t-1} k_t − v_t) k_tᵀ; returns (outputs W_t q-less list, final W)."""
    w, states = init.expand(B, -1, -1, -1), []
    for t in range(k.shape[-2]):
        kt, vt = k[..., t, :, None], v[..., t, :, None]
        a = 1.0 if alpha is None else alpha[..., t, None, None]
        w = a * w - eta[..., t, None, None] * (w @ kt - vt) @ kt.mT
        states.append(w)
    return states


@pytest.mark.parametrize("gated", [False, True])
def test_linear_l2_gd_is_delta_rule(gated, make_inputs):
    """C = 1, L2, GD: the delta rule [NL-L Eq 65]; with α it is the gated delta rule [T App. C Eq 33, η = 0]."""
    spec = linear_spec(objective="l2", rule="gd", chunk_size=1)
    init, q, k, v, eta, alpha, _ = make_inputs(spec, 10)
    alpha = alpha if gated else None
    out, state = run(memory_scan, spec, init, q, k, v, eta, alpha, None)
    states = delta_rule(init["W"], k, v, eta, alpha)
    expected = torch.stack([w @ q[..., t, :, None] for t, w in enumerate(states)], dim=-3).squeeze(-1)
    assert_close(out, expected)
    assert_close(state["W"], states[-1])


@pytest.mark.parametrize("chunk", [1, 3, 16])
def test_dot_dgd_is_gated_delta_rule_at_any_chunk(chunk, make_inputs):
    """Dot objective + DGD is the gated delta rule W_t = W_{t-1}(α_t I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ for any C (D6)."""
    spec = linear_spec(objective="dot", rule="dgd", chunk_size=chunk)
    init, q, k, v, eta, alpha, _ = make_inputs(spec, 13)
    out, _ = run(memory_scan, spec, init, q, k, v, eta, alpha, None)
    w, eye = init["W"].expand(B, -1, -1, -1), torch.eye(D, dtype=DT)
    for t in range(13):
        kt, vt = k[..., t, :, None], v[..., t, :, None]
        a, e = alpha[..., t, None, None], eta[..., t, None, None]
        w = w @ (a * eye - e * kt @ kt.mT) + e * vt @ kt.mT
        assert_close(out[..., t, :], (w @ q[..., t, :, None]).squeeze(-1))


def test_titans_momentum_and_decay_chunked(make_inputs):
    """[T Eqs 13-14, 16-18]: S_t = β S − η ∇ℓ(M_{t'}), M_t = α M + S, gradients at the chunk start t'."""
    chunk, length = 4, 10
    spec = linear_spec(objective="l2", rule="gd", momentum="titans", chunk_size=chunk)
    init, q, k, v, eta, alpha, beta = make_inputs(spec, length)
    out, state = run(memory_scan, spec, init, q, k, v, eta, alpha, beta)
    m = init["W"].expand(B, -1, -1, -1)
    surprise = torch.zeros_like(m)
    for t in range(length):
        if t % chunk == 0:
            m_start = m
        kt, vt = k[..., t, :, None], v[..., t, :, None]
        grad = (m_start @ kt - vt) @ kt.mT
        surprise = beta[..., t, None, None] * surprise - eta[..., t, None, None] * grad
        m = alpha[..., t, None, None] * m + surprise
        assert_close(out[..., t, :], (m @ q[..., t, :, None]).squeeze(-1))
    assert_close(state["W_mom"], -surprise)


def test_closed_form_gradients_match_autograd(make_inputs):
    for kind, objective, act in itertools.product(("linear", "mlp"), ("l2", "dot"), ("silu", "gelu")):
        spec = MemorySpec(kind=kind, objective=objective, activation=act)
        init, _, k, v, *_ = make_inputs(spec, 1, batch=1)
        weights = {n: w.unsqueeze(0).clone().requires_grad_(True) for n, w in init.items()}
        grads = torch.autograd.grad(inner_loss(spec, weights, k, v), list(weights.values()))
        factors = boundary_factors(spec, weights, k, v)
        for (name, _), g in zip(weights.items(), grads):
            e, p = factors[name]
            assert_close(e.mT @ p, g)


def test_segment_products_exact_with_zero_gates():
    a = torch.tensor([0.5, 0.0, 2.0, 3.0], dtype=DT)
    d = segment_products(a)
    assert d[3, 0] == 0.0 and d[3, 1] == 6.0 and d[2, 2] == 1.0 and d[0, 3] == 0.0


def test_segmented_calls_equal_one_call(make_inputs):
    spec = MemorySpec(kind="mlp", rule="dgd", momentum="titans", chunk_size=8)
    init, q, k, v, eta, alpha, beta = make_inputs(spec, 30)
    full, st_full = run(memory_scan, spec, init, q, k, v, eta, alpha, beta)
    state = init_memory_state(spec, init, B)
    pieces, start = [], 0
    for end in (5, 6, 19, 30):
        sl = slice(start, end)
        out, state = memory_scan(spec, state, q[..., sl, :], k[..., sl, :], v[..., sl, :], eta[..., sl],
                                 alpha[..., sl], beta[..., sl], pos=start)
        pieces.append(out)
        start = end
    assert_close(torch.cat(pieces, dim=-2), full, 1e-12)
    for name in st_full:
        assert_close(state[name], st_full[name], 1e-12)


def test_batch_isolation(make_inputs):
    spec = MemorySpec(kind="mlp", rule="dgd", momentum="scaled", chunk_size=4)
    init, q, k, v, eta, alpha, beta = make_inputs(spec, 9, batch=3)
    out, state = run(memory_scan, spec, init, q, k, v, eta, alpha, beta)
    for i in range(3):
        sl = slice(i, i + 1)
        one, st1 = run(memory_scan, spec, init, q[sl], k[sl], v[sl], eta[sl], alpha[sl], beta[sl])
        assert_close(out[sl], one, 1e-12)
        for name in state:
            assert_close(state[name][sl], st1[name], 1e-12)


@pytest.mark.parametrize("fn", [memory_scan, memory_scan_reference], ids=["fast", "reference"])
@pytest.mark.parametrize("kind,rule,momentum", [("linear", "dgd", "titans"), ("mlp", "dgd", "scaled"), ("mlp", "gd", "titans")])
def test_gradcheck(fn, kind, rule, momentum, make_inputs):
    spec = MemorySpec(kind=kind, rule=rule, momentum=momentum, chunk_size=2)
    init, q, k, v, eta, alpha, beta = make_inputs(spec, 5, batch=1, requires_grad=True, heads=1, dim=3, hidden=2)
    names = list(init)

    def func(*args):
        params = dict(zip(names, args[:len(names)]))
        out, state = run(fn, spec, params, *args[len(names):])
        return out, *(state[n] for n in names)

    assert torch.autograd.gradcheck(func, (*init.values(), q, k, v, eta, alpha, beta))


@pytest.mark.parametrize("kind,read", list(itertools.product(("linear", "mlp"), ("after", "boundary"))))
def test_fast_gradients_equal_reference_gradients(kind, read, make_inputs):
    spec = MemorySpec(kind=kind, rule="dgd", momentum="titans", chunk_size=4, read=read)
    inputs = make_inputs(spec, 11, requires_grad=True)
    leaves = [*inputs[0].values(), *inputs[1:]]
    weight = torch.randn(B, H, 11, D, generator=torch.Generator().manual_seed(3), dtype=DT)
    grads = []
    for fn in (memory_scan, memory_scan_reference):
        out, state = run(fn, spec, *inputs)
        loss = (out * weight).sum() + sum(s.square().sum() for s in state.values())
        grads.append(torch.autograd.grad(loss, leaves))
    for gf, gr in zip(*grads):
        assert_close(gf, gr)


def test_spec_validation_names_field():
    with pytest.raises(ConfigError, match="mem.rule"):
        MemorySpec(rule="adam", field="mem")
    with pytest.raises(ConfigError, match="chunk_size"):
        MemorySpec(chunk_size=0)


def test_float32_fast_path_tracks_float64(make_inputs):
    """The triangular solve and the gate products stay accurate in float32 at C = 64, η up to 1."""
    spec = MemorySpec(kind="linear", objective="dot", rule="dgd", chunk_size=64)
    init, q, k, v, eta, alpha, _ = make_inputs(spec, 200)
    eta = 2 * eta
    out64, _ = run(memory_scan, spec, init, q, k, v, eta, alpha, None)
    out32, _ = run(memory_scan, spec, {"W": init["W"].float()}, *(t.float() for t in (q, k, v, eta, alpha)), None)
    assert (out32.double() - out64).abs().max().item() < 1e-5 * out64.abs().max().item() + 1e-6


def test_scalar_head_memory_without_residual(make_inputs):
    """d → h → 1 MLP memories with no residual (the η/α heads of D8) run through the same scan."""
    spec = MemorySpec(kind="mlp", rule="dgd", momentum="scaled", residual=False, chunk_size=4)
    init, q, k, v, eta, alpha, beta = make_inputs(spec, 10)
    init = {"W1": init["W1"][:, :1], "W2": init["W2"]}
    out_f, st_f = run(memory_scan, spec, init, q, k, v[..., :1], eta, alpha, beta, pos=2)
    out_r, st_r = run(memory_scan_reference, spec, init, q, k, v[..., :1], eta, alpha, beta, pos=2)
    assert out_f.shape == (B, H, 10, 1)
    assert_close(out_f, out_r)
    for name in st_f:
        assert_close(st_f[name], st_r[name])


@pytest.mark.parametrize("kind,read", list(itertools.product(("linear", "mlp"), ("after", "boundary"))))
def test_stopgrad_writes(kind, read, make_inputs):
    """D3 "stopgrad": same values; gradients reach q and M_0 only (fast path = reference)."""
    spec = MemorySpec(kind=kind, rule="dgd", momentum="titans", chunk_size=4, read=read)
    stop = MemorySpec(kind=kind, rule="dgd", momentum="titans", chunk_size=4, write_grad="stopgrad", read=read)
    init, q, k, v, eta, alpha, beta = make_inputs(spec, 11, requires_grad=True)
    out_d, st_d = run(memory_scan, spec, init, q, k, v, eta, alpha, beta)
    results = [run(fn, stop, init, q, k, v, eta, alpha, beta) for fn in (memory_scan, memory_scan_reference)]
    for out, state in results:
        assert_close(out, out_d, 1e-12)
        for name in st_d:
            assert_close(state[name], st_d[name], 1e-12)
    leaves = [*init.values(), q, k, v, eta, alpha, beta]
    grads = [torch.autograd.grad(out.square().sum() + state[spec.weight_names[0]].sum(), leaves, allow_unused=True)
             for out, state in results]
    for g_fast, g_ref in zip(*grads):
        assert (g_fast is None) == (g_ref is None)
        if g_fast is not None:
            assert_close(g_fast, g_ref)
    n = len(init)
    assert all(g is not None for g in grads[0][:n + 1]) and all(g is None for g in grads[0][n + 1:])


def test_write_grad_validation():
    with pytest.raises(ConfigError, match="write_grad"):
        MemorySpec(write_grad="none")


def test_compiled_chunk_step_equals_the_eager_one(make_inputs):
    """``compile_chunk_step``: the same outputs, state and gradients (aot_eager traces the step as
    inductor does, without needing a C++ compiler), over an odd length with a short last chunk."""
    spec = MemorySpec(kind="mlp", rule="dgd", momentum="ema", chunk_size=4, step_norm="bounded", write_bound=1.0,
                      eigen="signed")
    inputs = make_inputs(spec, 11, requires_grad=True)
    leaves = [*inputs[0].values(), *inputs[1:]]
    results = []
    try:
        for backend in (None, "aot_eager"):
            compile_chunk_step(backend)
            out, state = run(memory_scan, spec, *inputs)
            loss = out.square().sum() + sum(s.square().sum() for s in state.values())
            results.append((out, state, torch.autograd.grad(loss, leaves)))
    finally:
        compile_chunk_step(None)
    assert_runs_close(*results)


def test_compiled_chunk_step_compiles_more_shapes_than_dynamos_default():
    """Hope needs a dozen graphs of the chunk step; past dynamo's default limit of 8 the rest would
    run eagerly without a word."""
    from torch._dynamo.utils import counters

    spec = MemorySpec(kind="linear", rule="gd", chunk_size=4)
    torch._dynamo.reset()
    counters.clear()
    try:
        compile_chunk_step("aot_eager")
        for n in range(1, 11):  # ten lengths below one chunk: ten shapes of the one chunk step
            state = init_memory_state(spec, {"W": torch.zeros(3, 3)}, 2)
            memory_scan(spec, state, *(torch.randn(2, n, 3) for _ in range(3)), torch.full((2, n), 0.1))
    finally:
        compile_chunk_step(None)
    assert counters["stats"]["unique_graphs"] >= 10
