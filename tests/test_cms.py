"""Continuum Memory System: the chunk-wise fast path equals the token-by-token equations (Eqs 70–74)."""

import pytest
import torch

from nestlearn.errors import ConfigError
from nestlearn.layers.cms import CMS, CMSConfig
from nestlearn.layers.cms.naive import cms_reference

D = 8


def make(variant="sequential", order="slow_first", eta_max=1.0, chunk_sizes=(12, 4, 2), seed=0, form="mlp",
         step=("bounded", 0.0)):
    torch.manual_seed(seed)
    cms = CMS(D, CMSConfig(chunk_sizes=chunk_sizes, variant=variant, order=order, hidden_mult=2,
                           eta_max=eta_max, eta_init=0.5, level_form=form, step_norm=step[0],
                           write_bound=step[1])).double()
    with torch.no_grad():  # non-trivial slow parameters so every term of the update matters
        for level in cms.levels:
            level.eta.weight.normal_(0, 0.3)
            level.initial["W1"].normal_(0, 0.1)
            level.norm.weight.uniform_(0.5, 1.5)
        if cms.agg is not None:
            cms.agg.normal_()
    return cms


VARIANTS = [("sequential", "slow_first"), ("sequential", "fast_first"), ("nested", "slow_first"),
            ("independent", "slow_first")]
FORMS = ["mlp", "swiglu"]
# (step_norm, write_bound): D13's plain 1/(C·d) scale, the per-weight steps and the write bound (design.md S3, S5).
STEPS = [("none", 0.0), ("bounded", 0.0), ("bounded", 0.5)]


@pytest.mark.parametrize("step", STEPS, ids=str)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("variant, order", VARIANTS)
@pytest.mark.parametrize("length, pos", [(1, 0), (7, 0), (37, 0), (29, 5)])
def test_fast_path_equals_reference(variant, order, length, pos, form, step):
    cms = make(variant, order, form=form, step=step)
    x = torch.randn(3, length, D, dtype=torch.float64)
    state = cms.init_state(3, dtype=torch.float64)
    y, s = cms(x, state, pos)
    y_ref, s_ref = cms_reference(cms, x, state, pos)
    assert y.abs().max() < 50, "test inputs must keep the writes stable"
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    assert s.keys() == s_ref.keys()
    for key in s:
        torch.testing.assert_close(s[key], s_ref[key], rtol=0, atol=1e-10, msg=key)


@pytest.mark.parametrize("step", STEPS, ids=str)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("variant, order", VARIANTS)
def test_gradients_agree_with_reference(variant, order, form, step):
    cms = make(variant, order, form=form, step=step)
    x = torch.randn(2, 15, D, dtype=torch.float64, requires_grad=True)
    params = [x, *cms.parameters()]
    g_fast = torch.autograd.grad(cms(x)[0].pow(2).sum(), params)
    g_ref = torch.autograd.grad(cms_reference(cms, x)[0].pow(2).sum(), params)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("form", FORMS)
def test_gradcheck_through_writes(form):
    cms = make("nested", chunk_sizes=(4, 2), form=form)
    x = torch.randn(1, 9, D, dtype=torch.float64, requires_grad=True)
    level = cms.levels[1]
    w_in = level.w_in if form == "mlp" else level.w_gate
    assert torch.autograd.gradcheck(lambda inp, w: cms(inp)[0], (x, w_in))


@pytest.mark.parametrize("form", FORMS)
def test_segments_with_carried_state_equal_one_pass(form):
    for variant, order in VARIANTS:
        cms = make(variant, order, form=form)
        x = torch.randn(2, 41, D, dtype=torch.float64)
        whole, s_whole = cms(x)
        state, parts = None, []
        for lo, hi in ((0, 5), (5, 6), (6, 30), (30, 41)):
            y, state = cms(x[:, lo:hi], state, lo)
            parts.append(y)
        torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=0, atol=1e-12)
        for key in s_whole:
            torch.testing.assert_close(state[key], s_whole[key], rtol=0, atol=1e-12)


@pytest.mark.parametrize("form", FORMS)
def test_broadcast_and_materialised_states_agree(form):
    """A fresh state's weights are one matrix broadcast over the batch; the same values held per
    sample, for all weights or some, give the same results."""
    cms = make(form=form)
    x = torch.randn(2, 19, D, dtype=torch.float64)
    state = cms.init_state(2, dtype=torch.float64)
    y, s = cms(x, state, 3)
    for keys in (list(state), ["0.W2", "1.W1_b", "2.W2"]):
        mixed = {k: v.clone() if k in keys else v for k, v in state.items()}
        y2, s2 = cms(x, mixed, 3)
        torch.testing.assert_close(y2, y, rtol=0, atol=1e-12)
        for key in s:
            torch.testing.assert_close(s2[key], s[key], rtol=0, atol=1e-12, msg=key)


def test_batch_isolation_and_causality():
    cms = make("sequential")
    x = torch.randn(3, 30, D, dtype=torch.float64)
    y = cms(x)[0]
    x2 = x.clone()
    x2[1] += torch.randn(30, D, dtype=torch.float64)
    x2[:, 20:] = torch.randn(3, 10, D, dtype=torch.float64)
    y2 = cms(x2)[0]
    assert torch.equal(y[[0, 2], :20], y2[[0, 2], :20])
    assert not torch.allclose(y[1], y2[1])
    # A batch of 3 equals three single-sample runs.
    singles = torch.cat([cms(x[i:i + 1])[0] for i in range(3)])
    torch.testing.assert_close(singles, y, rtol=0, atol=1e-12)


def static_chain(cms, x):
    for level in cms.levels:
        x = level.static_read(x)
    return x


@pytest.mark.parametrize("form", FORMS)
def test_zero_learning_rate_is_the_static_mlp_chain_and_writes_start_after_a_chunk(form):
    frozen = make(eta_max=0.0, form=form)
    x = torch.randn(2, 25, D, dtype=torch.float64)
    y, state = frozen(x)
    assert torch.equal(y, static_chain(frozen, x)) and state == {}
    torch.testing.assert_close(cms_reference(frozen, x)[0], y, rtol=0, atol=1e-12)
    live = make(eta_max=1.0, form=form)
    y, static = live(x)[0], static_chain(live, x)
    fastest = live.cfg.chunk_sizes[-1]
    torch.testing.assert_close(y[:, :fastest], static[:, :fastest], rtol=0, atol=1e-12)
    assert (y[:, fastest:] - static[:, fastest:]).abs().max() > 1e-6


def test_nested_level_restarts_from_its_fast_initial_state():
    cms = make("nested", chunk_sizes=(6, 2))
    x = torch.randn(1, 6, D, dtype=torch.float64)
    _, state = cms(x)
    # After a slow boundary the fast level equals its (updated) initial state, which has moved.
    assert all(torch.equal(state[f"1.{n}"], state[f"1.init.{n}"]) for n in ("W1", "W2", "W1_b", "W2_b"))
    assert not torch.allclose(state["1.init.W2"], cms.levels[1].w_in.expand_as(state["1.init.W2"]))


@pytest.mark.parametrize("kwargs, field", [
    ({"chunk_sizes": (4, 8)}, "cms.chunk_sizes: must be strictly decreasing"),
    ({"chunk_sizes": (6, 4), "variant": "nested"}, "cms.chunk_sizes: the nested variant"),
    ({"variant": "parallel"}, "cms.variant: must be one of"),
    ({"signal": "hebbian"}, "cms.signal: must be one of 'kv', 'lss', 'optimizer'"),
    ({"signal": "optimizer", "variant": "nested", "chunk_sizes": (4, 2)}, "cms.variant: the optimizer signal"),
    ({"signal": "lss", "chunk_sizes": (6, 4)}, "cms.chunk_sizes: the lss signal"),
    ({"step_periods": (1, 4)}, "cms.step_periods: must be strictly decreasing"),
    ({"step_periods": (4, 0)}, "cms.step_periods"),
    ({"step_periods": ()}, "cms.step_periods: needs at least one level"),
    ({"eta_max": -1.0}, "cms.eta_max"),
    ({"level_form": "geglu"}, "cms.level_form: must be one of"),
    ({"level_form": "swiglu", "activation": "gelu"}, "cms.activation: the swiglu level form gates with SiLU"),
    ({"hidden": 0}, "cms.hidden"),
    ({"level_assignment": "depth_groups", "variant": "nested", "chunk_sizes": (4, 2)}, "cms.variant: depth_groups"),
    ({"level_assignment": "depth_groups"}, "cms.level_assignment: 'depth_groups' spreads levels"),
])
def test_bad_config(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        CMS(D, CMSConfig(**kwargs))


def test_hope_attention_model_streams_and_trains(fit_batch):
    from nestlearn.config import from_dict
    from nestlearn.models import CausalLM
    from nestlearn.models.hope_attention import HopeAttentionConfig

    cfg = from_dict(HopeAttentionConfig, {"vocab_size": 32, "d_model": 16, "n_layers": 2, "n_heads": 2,
                                          "max_seq_len": 64, "cms": {"chunk_sizes": [8, 2]}}, prefix="model")
    torch.manual_seed(0)
    model = CausalLM(cfg).double()
    x = torch.randint(0, 32, (2, 27))
    whole = model(x).logits
    state, parts = model.init_state(2), []
    for lo, hi in ((0, 9), (9, 10), (10, 27)):
        out = model(x[:, lo:hi], state=state)
        parts.append(out.logits)
        state = out.state
    torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=0, atol=1e-10)
    losses = fit_batch(model.float(), x, 40, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("form, output", [("mlp", "w_out"), ("swiglu", "w_down")])
def test_bounded_step_keeps_a_level_with_a_large_output_layer_finite(form, output):
    """design.md S3 (CMS): W_in's step divided by its curvature ‖n(k)‖²·‖∂F/∂p‖² stays finite where a
    step scaled by the input alone (D13's 1/(C·d)) runs away once W_out's gain is large."""
    x = 10 * torch.randn(2, 2048, 16, generator=torch.Generator().manual_seed(0))
    finite = {}
    for step in ("bounded", "none"):
        torch.manual_seed(0)
        cms = CMS(16, CMSConfig(chunk_sizes=(4,), hidden_mult=2, eta_init=0.9, step_norm=step, level_form=form))
        with torch.no_grad():
            getattr(cms.levels[0], output).normal_(0, 3.0)  # a gain ‖W_out‖² far above 1, as after training
            y, state = cms(x)
        finite[step] = bool(torch.isfinite(y).all())
        if step == "bounded":
            assert state["0.W2"].norm() < 100
    assert finite == {"bounded": True, "none": False}


@pytest.mark.parametrize("form", FORMS)
def test_compiled_chunk_step_equals_the_eager_one_for_the_levels(form):
    """The levels run on the memory primitive, so ``compile_chunk_step`` compiles their chunk steps
    too: the same outputs, states and gradients (aot_eager traces as inductor does, without needing
    a C++ compiler)."""
    from nestlearn.memory import compile_chunk_step

    cms = make(form=form, step=("bounded", 0.5))
    x = torch.randn(2, 15, D, dtype=torch.float64, requires_grad=True)
    params = [x, *cms.parameters()]
    runs = []
    try:
        for backend in (None, "aot_eager"):
            compile_chunk_step(backend)
            y, s = cms(x, cms.init_state(2, dtype=torch.float64), 3)
            loss = y.pow(2).sum() + sum(t.pow(2).sum() for t in s.values())
            runs.append((y, s, torch.autograd.grad(loss, params)))
    finally:
        compile_chunk_step(None)
    (y, s, g), (y_c, s_c, g_c) = runs
    torch.testing.assert_close(y_c, y, rtol=1e-12, atol=1e-12)
    for key in s:
        torch.testing.assert_close(s_c[key], s[key], rtol=1e-12, atol=1e-12, msg=key)
    for a, b in zip(g_c, g):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
