"""The primitive's stability and range switches (design.md S1–S5): fast path vs reference in float64,
outputs, states and outer gradients, and what each switch guarantees."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from nestlearn.memory import MemorySpec, init_memory_state, memory_scan, memory_scan_reference
from nestlearn.memory.monitor import watch

DT = torch.float64
B = 2  # the batch of the inputs fixture (memory_inputs)


@pytest.fixture
def make_inputs(memory_inputs):
    """Inputs with values twice the keys' scale, so the stability switches have something to bound."""

    def make(kind: str, length: int, momentum: bool, seed: int = 0, requires_grad: bool = False):
        return memory_inputs(kind, length, momentum, seed, requires_grad=requires_grad, mlp_scale=0.5, v_scale=2.0)

    return make


def both(spec, init, q, k, v, eta, alpha, beta, pos=0):
    anchor = init if spec.retain == "initial" else None
    results = []
    for fn in (memory_scan, memory_scan_reference):
        state = init_memory_state(spec, init, q.shape[0])
        results.append(fn(spec, state, q, k, v, eta, alpha, beta, pos=pos, anchor=anchor))
    return results


def close(a, b, tol=1e-11):
    """Agreement relative to the reference's scale (momentum without a bound lets values grow)."""
    return (a - b).abs().max() <= tol * (1 + b.abs().max())


CASES = list(itertools.product(("linear", "mlp"), ("gd", "dgd"), ("none", "titans", "ema"),
                               ("none", "implicit", "bounded"), ("zero", "initial")))


@pytest.mark.parametrize("kind,rule,momentum,step_norm,retain", CASES)
def test_switches_fast_equals_reference(kind, rule, momentum, step_norm, retain, make_inputs):
    for length, pos, eigen, bound in ((13, 0, "signed", 0.0), (21, 5, "positive", 0.7)):
        spec = MemorySpec(kind=kind, rule=rule, momentum=momentum, step_norm=step_norm, retain=retain,
                          eigen=eigen, write_bound=bound, chunk_size=8, read="before" if pos else "after")
        inputs = make_inputs(kind, length, momentum != "none", seed=length)
        (out_f, st_f), (out_r, st_r) = both(spec, *inputs, pos=pos)
        assert close(out_f, out_r)
        for name in st_f:
            assert close(st_f[name], st_r[name]), name


@pytest.mark.parametrize("kind", ("linear", "mlp"))
def test_switches_outer_gradients_match(kind, make_inputs):
    spec = MemorySpec(kind=kind, rule="dgd", momentum="ema", step_norm="bounded", retain="initial",
                      eigen="signed", write_bound=0.8, chunk_size=4, objective="l2")
    grads = []
    for fn in (memory_scan, memory_scan_reference):
        init, q, k, v, eta, alpha, beta = make_inputs(kind, 11, True, seed=3, requires_grad=True)
        state = init_memory_state(spec, init, B)
        out, st = fn(spec, state, q, k, v, eta, alpha, beta, pos=2, anchor=init)
        loss = out.pow(2).sum() + sum(t.sum() for t in st.values())
        leaves = [*init.values(), q, k, v, eta, alpha, beta]
        grads.append(torch.autograd.grad(loss, leaves))
    for a, b in zip(*grads):
        assert close(a, b, 1e-10)


def test_signed_range_reaches_negative_eigenvalue():
    """DeltaNet's transition along k is α − η̃‖k‖²: below 0 only under ``eigen="signed"``."""
    k = F.normalize(torch.randn(1, 1, 1, 4, dtype=DT), dim=-1)
    eye = torch.eye(4, dtype=DT).expand(1, 1, 4, 4)
    eta = torch.full((1, 1, 1), 0.95, dtype=DT)
    values = {}
    for eigen in ("positive", "signed"):
        spec = MemorySpec(kind="linear", objective="dot", rule="dgd", chunk_size=1, eigen=eigen)
        # With zero values the write is W ← W(I − η̃ k kᵀ); applied to W = I it is the transition itself.
        _, st = memory_scan(spec, {"W": eye, "W_b": eye}, k, k, torch.zeros_like(k), eta)
        values[eigen] = torch.linalg.eigvalsh(st["W"][0, 0]).min().item()
    assert values["positive"] == pytest.approx(0.05)
    assert values["signed"] == pytest.approx(-0.9)


def test_ema_momentum_does_not_amplify():
    """A constant gradient: scaled momentum's step grows to η/(1 − β)·g, ema's stays at η·g."""
    k = torch.zeros(1, 1, 50, 3, dtype=DT)
    k[..., 0] = 1.0
    v = torch.ones(1, 1, 50, 3, dtype=DT)
    eta, beta = torch.full((1, 1, 50), 0.1, dtype=DT), torch.full((1, 1, 50), 0.9, dtype=DT)
    steps = {}
    for momentum in ("scaled", "ema"):
        spec = MemorySpec(kind="linear", objective="dot", momentum=momentum, chunk_size=64)
        zero = torch.zeros(1, 1, 3, 3, dtype=DT)
        _, st = memory_scan(spec, {"W": zero, "W_b": zero, "W_mom": zero}, k, k, v, eta, beta=beta)
        steps[momentum] = (eta[0, 0, -1] * st["W_mom"]).abs().max().item()
    assert steps["ema"] <= 0.1 + 1e-12
    assert steps["scaled"] > 0.9


def test_bounded_step_keeps_large_inputs_stable():
    """An L2 write on inputs of norm 10: plain GD at η = 0.5 diverges, the bounded step does not."""
    g = torch.Generator().manual_seed(0)
    k = 10 * F.normalize(torch.randn(1, 1, 200, 4, generator=g, dtype=DT), dim=-1)
    v = torch.randn(1, 1, 200, 4, generator=g, dtype=DT)
    eta = torch.full((1, 1, 200), 0.5, dtype=DT)
    norms = {}
    for step_norm in ("none", "bounded", "implicit"):
        spec = MemorySpec(kind="linear", objective="l2", chunk_size=1, step_norm=step_norm)
        zero = torch.zeros(1, 1, 4, 4, dtype=DT)
        out, st = memory_scan(spec, {"W": zero, "W_b": zero}, k, k, v, eta)
        norms[step_norm] = st["W"].norm().item()
    assert not torch.isfinite(torch.tensor(norms["none"])) or norms["none"] > 1e10
    assert norms["bounded"] < 10 and norms["implicit"] < 10


def test_retention_toward_initial_state():
    """With no writes (η → 0) a decaying memory goes to 0 under ``retain="zero"`` and stays at W₀ under "initial"."""
    init = {"W": torch.randn(1, 3, 3, dtype=DT)}
    k = F.normalize(torch.randn(1, 1, 40, 3, dtype=DT), dim=-1)
    eta, alpha = torch.full((1, 1, 40), 1e-12, dtype=DT), torch.full((1, 1, 40), 0.8, dtype=DT)
    for retain, target in (("zero", torch.zeros(1, 3, 3, dtype=DT)), ("initial", init["W"])):
        spec = MemorySpec(kind="linear", objective="dot", retain=retain, chunk_size=16)
        state = init_memory_state(spec, init, 1)
        _, st = memory_scan(spec, state, k, k, k, eta, alpha, anchor=init if retain == "initial" else None)
        assert (st["W"][0] - target).abs().max() < 1e-3


def test_write_bound_limits_each_gradient():
    spec = MemorySpec(kind="linear", objective="dot", chunk_size=1, write_bound=0.25)
    k = torch.zeros(1, 1, 1, 3, dtype=DT)
    k[..., 0] = 1.0
    v = torch.full((1, 1, 1, 3), 5.0, dtype=DT)
    zero = torch.zeros(1, 1, 3, 3, dtype=DT)
    _, st = memory_scan(spec, {"W": zero, "W_b": zero}, k, k, v, torch.ones(1, 1, 1, dtype=DT))
    assert st["W"].norm().item() == pytest.approx(0.25)


def test_anchor_required_exactly_with_initial_retention():
    spec = MemorySpec(kind="linear", retain="initial")
    zero = torch.zeros(1, 1, 2, 2)
    x = torch.zeros(1, 1, 3, 2)
    with pytest.raises(ValueError, match="anchor"):
        memory_scan(spec, {"W": zero, "W_b": zero}, x, x, x, torch.ones(1, 1, 3))


def test_monitor_names_the_memory_and_token():
    spec = MemorySpec(kind="linear", objective="dot", chunk_size=4)
    zero = torch.zeros(1, 1, 2, 2)
    q = torch.ones(1, 1, 10, 2)
    v = torch.ones(1, 1, 10, 2)
    v[0, 0, 6] = float("inf")
    with watch() as mon:
        memory_scan(spec, {"W": zero, "W_b": zero}, q, q, v, torch.full((1, 1, 10), 0.1), tag="mem")
    assert mon.first_nonfinite is not None and mon.first_nonfinite.name == "mem"
    assert (mon.first_nonfinite.start, mon.first_nonfinite.end) == (4, 8)
    assert str(mon.first_nonfinite) == "mem at tokens 4–7"
    assert set(mon.max_norm) == {"mem.W"}
