"""Where the retention gate meets the delta rule (design.md S12): Gated DeltaNet as Yang et al. publish
it, α M(I − η k kᵀ) + η v kᵀ, beside NL-L Eq 92's M(α I − η k kᵀ) + η v kᵀ; fast path vs reference
in float64, the step by hand, the validation, and old checkpoints loading as Eq 92."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from nestlearn.cli import main
from nestlearn.errors import CheckpointError, ConfigError
from nestlearn.memory import MemorySpec, init_memory_state, memory_scan, memory_scan_reference
from nestlearn.models.lm import model_config_from_dict, model_config_to_dict
from nestlearn.train import Trainer
from nestlearn.train.checkpoint import load_checkpoint, save_checkpoint
from nestlearn.train.config import load_run_config
from nestlearn.train.loading import load_model

DT = torch.float64
B, H, D = 2, 2, 5  # the sizes of the inputs fixture (memory_inputs)


@pytest.fixture
def make_inputs(memory_inputs):
    """Inputs with gates well below 1, so the two forms differ by a clear margin."""

    def make(kind: str, length: int, momentum: bool, seed: int = 0, requires_grad: bool = False):
        return memory_inputs(kind, length, momentum, seed, requires_grad=requires_grad, w_scale=0.5, alpha_low=0.5)

    return make


def scan(fn, spec, init, q, k, v, eta, alpha, beta, pos=0):
    return fn(spec, init_memory_state(spec, init, q.shape[0]), q, k, v, eta, alpha, beta, pos=pos)


def close(a, b, tol=1e-11):
    return (a - b).abs().max() <= tol * (1 + b.abs().max())


GATED_DELTANET = dict(kind="linear", objective="dot", rule="dgd")


@pytest.mark.parametrize("eigen,chunk", list(itertools.product(("positive", "signed"), (1, 3, 8, 16))))
def test_yang_fast_equals_reference(eigen, chunk, make_inputs):
    for length, pos in ((1, 0), (13, 0), (21, 5)):
        spec = MemorySpec(**GATED_DELTANET, chunk_size=chunk, eigen=eigen, gate_form="yang")
        inputs = make_inputs("linear", length, False, seed=length)
        (out_f, st_f), (out_r, st_r) = (scan(fn, spec, *inputs, pos=pos) for fn in (memory_scan, memory_scan_reference))
        assert close(out_f, out_r)
        for name in st_f:
            assert close(st_f[name], st_r[name]), name


@pytest.mark.parametrize("kind,objective,momentum,step_norm", [("linear", "l2", "ema", "bounded"),
                                                               ("mlp", "l2", "titans", "implicit")])
def test_yang_fast_equals_reference_other_dgd_memories(kind, objective, momentum, step_norm, make_inputs):
    spec = MemorySpec(kind=kind, objective=objective, rule="dgd", momentum=momentum, step_norm=step_norm,
                      write_bound=0.8, eigen="signed", chunk_size=4, gate_form="yang")
    inputs = make_inputs(kind, 11, True, seed=2)
    (out_f, st_f), (out_r, st_r) = (scan(fn, spec, *inputs, pos=1) for fn in (memory_scan, memory_scan_reference))
    assert close(out_f, out_r)
    for name in st_f:
        assert close(st_f[name], st_r[name]), name


@pytest.mark.parametrize("eigen", ("positive", "signed"))
def test_yang_gradients_equal_reference_gradients(eigen, make_inputs):
    """Outer gradients w.r.t. the initial state, q, k, v and both gates (η, α), odd length, mid-chunk start."""
    spec = MemorySpec(**GATED_DELTANET, chunk_size=4, eigen=eigen, gate_form="yang")
    weight = torch.randn(B, H, 11, D, generator=torch.Generator().manual_seed(7), dtype=DT)
    grads = []
    for fn in (memory_scan, memory_scan_reference):
        init, q, k, v, eta, alpha, _ = make_inputs("linear", 11, False, seed=4, requires_grad=True)
        out, st = scan(fn, spec, init, q, k, v, eta, alpha, None, pos=3)
        loss = (out * weight).sum() + sum(t.square().sum() for t in st.values())
        grads.append(torch.autograd.grad(loss, [init["W"], q, k, v, eta, alpha]))
    for a, b in zip(*grads):
        assert close(a, b, 1e-10)


def one_step(make_inputs, gate_form: str, eigen: str = "positive"):
    """One token through the fast path from M₀: (M₀, k, v, η, α, M₁), one sample and head."""
    init, _, k, v, eta, alpha, _ = make_inputs("linear", 1, False, seed=11)
    spec = MemorySpec(**GATED_DELTANET, chunk_size=1, eigen=eigen, gate_form=gate_form)
    _, st = scan(memory_scan, spec, init, k, k, v, eta, alpha, None)
    m0 = init["W"][0]
    return m0, k[0, 0, 0, :, None], v[0, 0, 0, :, None], eta[0, 0, 0], alpha[0, 0, 0], st["W"][0, 0]


def test_one_yang_step_by_hand(make_inputs):
    m0, k, v, eta, alpha, m1 = one_step(make_inputs, "yang")
    eye = torch.eye(D, dtype=DT)
    assert close(m1, alpha * m0 @ (eye - eta * k @ k.mT) + eta * v @ k.mT, 1e-13)


def test_the_forms_differ_by_the_gated_delta_term(make_inputs):
    """Eq 92 − Yang = −(1 − α) η M k kᵀ (Eq 92 forgets less along k), and the forms agree without decay."""
    m0, k, v, eta, alpha, yang = one_step(make_inputs, "yang")
    *_, eq92 = one_step(make_inputs, "eq92")
    assert close(eq92 - yang, -(1 - alpha) * eta * m0 @ k @ k.mT, 1e-13)
    assert (yang - eq92).abs().max() > 1e-3
    spec = {f: MemorySpec(**GATED_DELTANET, chunk_size=4, gate_form=f) for f in ("yang", "eq92")}
    init, q, k, v, eta, _, _ = make_inputs("linear", 9, False)
    outs = [scan(memory_scan, spec[f], init, q, k, v, eta, None, None)[0] for f in spec]
    assert close(outs[0], outs[1], 1e-13)


def test_signed_yang_steps_up_to_two(make_inputs):
    """With ``eigen="signed"`` Yang's step is 2η: α M(I − 2η k kᵀ) + 2η v kᵀ, whose transition along k is
    α(1 − 2η), negative for η > 1/2 (Eq 92's signed step stays (1 + α)η)."""
    m0, k, v, eta, alpha, m1 = one_step(make_inputs, "yang", "signed")
    eye = torch.eye(D, dtype=DT)
    assert close(m1, alpha * m0 @ (eye - 2 * eta * k @ k.mT) + 2 * eta * v @ k.mT, 1e-13)
    *_, eq92 = one_step(make_inputs, "eq92", "signed")
    step = (1 + alpha) * eta
    assert close(eq92, m0 @ (alpha * eye - step * k @ k.mT) + step * v @ k.mT, 1e-13)
    # The transition on W = I with zero values: its eigenvalue along k.
    spec = MemorySpec(**GATED_DELTANET, chunk_size=1, eigen="signed", gate_form="yang")
    ident = torch.eye(4, dtype=DT).expand(1, 1, 4, 4)
    key = F.normalize(torch.ones(1, 1, 1, 4, dtype=DT), dim=-1)
    gates = torch.full((1, 1, 1), 0.95, dtype=DT), torch.full((1, 1, 1), 0.8, dtype=DT)
    _, st = memory_scan(spec, {"W": ident, "W_b": ident}, key, key, torch.zeros_like(key), *gates)
    assert torch.linalg.eigvalsh(st["W"][0, 0]).min().item() == pytest.approx(0.8 * (1 - 2 * 0.95))


def test_gate_form_validation_names_the_field_and_values():
    with pytest.raises(ConfigError, match=r"mem\.gate_form: must be one of 'eq92', 'yang'"):
        MemorySpec(gate_form="both", field="mem")
    with pytest.raises(ConfigError, match=r"model\.gate_form: 'yang' needs model\.rule='dgd'.*'eq92'"):
        model_config_from_dict({"family": "titans", "gate_form": "yang"})
    assert model_config_from_dict({"family": "titans"}).gate_form == "eq92"
    assert model_config_from_dict({"family": "deltanet", "gate_form": "yang"}).gate_form == "yang"


def test_gated_deltanet_defaults_to_yang_and_old_configs_load_as_eq92():
    new = model_config_from_dict({"family": "gated_deltanet"})
    assert new.gate_form == "yang" and new.memory_spec().gate_form == "yang"
    stored = model_config_to_dict(new)
    del stored["gate_form"]  # a config written before the switch existed
    assert model_config_from_dict(stored, stored=True).gate_form == "eq92"
    assert model_config_from_dict({**stored, "gate_form": "yang"}, stored=True).gate_form == "yang"
    assert model_config_from_dict(stored).gate_form == "yang"  # a user's config takes today's default


def _strip_gate_form(run):
    """Rewrite a run's checkpoint as a version before the switch would have written it."""
    path = run / "checkpoint.safetensors"
    tensors, meta = load_checkpoint(path)
    del meta["config"]["model"]["gate_form"]
    meta["switches"].pop("model.gate_form")
    save_checkpoint(path, tensors, meta)


def test_old_gated_deltanet_checkpoint_loads_and_resumes_as_eq92(tmp_path, tiny_text):
    run = tmp_path / "run"
    overrides = ["model.family=gated_deltanet", "model.d_model=16", "model.n_layers=1", "model.n_heads=2",
                 "model.chunk_size=4", "train.seq_len=16", "train.batch_size=2", "train.steps=2", "train.eval_every=2",
                 "train.eval_tokens=64", "train.sample_tokens=0", "train.warmup_steps=1", f"data.source={tiny_text}",
                 f"train.out_dir={run}"]
    cli = ["train", "--no-progress", *itertools.chain.from_iterable(("--set", o) for o in overrides)]
    assert main([*cli, "--set", "model.gate_form=eq92", "--set", "train.stop_at=1"]) == 0
    _strip_gate_form(run)
    model, _, _ = load_model(run)
    assert model.config.gate_form == "eq92"
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # the stored config as trained: no refusal
    _, meta = load_checkpoint(run)
    assert meta["step"] == 2 and meta["config"]["model"]["gate_form"] == "eq92"
    with pytest.raises(CheckpointError, match=r"model\.gate_form: checkpoint 'eq92', requested 'yang'"):
        Trainer(load_run_config(None, overrides), resume=run, progress=False)
