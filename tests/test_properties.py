"""Property-based tests (hypothesis): the config parser and every optimiser on zero, huge, inf and NaN gradients.

The config parser either builds a config or raises ConfigError naming a field; it never raises
anything else. Every optimiser either keeps the weights finite (finite gradients, however large)
or refuses the step with NonFiniteGradientError naming the parameter and changes nothing.
"""

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nestlearn.config import apply_overrides, parse_yaml
from nestlearn.errors import ConfigError, NonFiniteGradientError
from nestlearn.optim import (
    DGD,
    DMGD,
    M3,
    CombinedOptimizer,
    DeltaMomentum,
    Muon,
    OptimConfig,
    PreconditionedMomentum,
    build_optimizer,
)
from nestlearn.train.checkpoint import flatten
from nestlearn.train.config import run_config_from_dict

# Few examples, the same every run (derandomize) and no example database written into the tree.
FAST = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# -- the config parser ------------------------------------------------------------------------------

FIELDS = ["model.family", "model.d_model", "model.n_layers", "model.n_heads", "model.vocab_size", "model.widht",
          "data.source", "data.tokenizer", "optim.name", "optim.lr", "optim.betas", "train.steps",
          "train.seq_len", "train.min_lr_ratio", "train.device", "train.bf16", "nosection.x", "model", "train"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.text(max_size=5), SCALARS, max_size=2))


@FAST
@given(st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=4))
def test_config_values_build_a_config_or_name_the_field(fields):
    data = {"model": {"family": "transformer"}}
    try:
        apply_overrides(data, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in fields.items()])
        run_config_from_dict(data)
    except ConfigError as err:
        assert err.field and str(err).startswith(f"{err.field}: ") and "\n" not in str(err), err


@FAST
@given(st.text(max_size=40))
def test_override_strings_never_crash_the_parser(text):
    try:
        run_config_from_dict(apply_overrides({"model": {"family": "hope"}}, [text]))
    except ConfigError as err:
        assert err.field and "\n" not in str(err), err


@FAST
@given(st.text(max_size=60))
def test_parse_yaml_reads_any_scalar_text_or_raises_a_yaml_error(text):
    try:
        parse_yaml(text)
    except yaml.YAMLError:
        pass


# -- optimisers on zero, huge, inf and NaN gradients --------------------------------------------------

ROWS, COLS = 6, 5


def make(name):
    """(model, optimizer) over a Linear(COLS, ROWS) weight; the built (combined) ones also hold a bias for AdamW."""
    torch.manual_seed(0)
    model = torch.nn.Linear(COLS, ROWS, bias=name.startswith("built:") or name == "adamw-then-muon")
    named = [("w", model.weight)]
    if name == "dgd":
        return model, DGD(model, lr=0.1)
    if name.startswith("built:"):
        return model, build_optimizer(model, OptimConfig(name=name[6:]))
    if name == "adamw-then-muon":  # a torch child before a nestlearn one must not step alone either
        return model, CombinedOptimizer([torch.optim.AdamW([model.bias]), Muon(named)])
    cls = {"muon": Muon, "m3": M3, "dmgd": DMGD, "delta": DeltaMomentum, "precond": PreconditionedMomentum}[name]
    return model, cls(named)


OPTIMIZERS = ["muon", "m3", "dmgd", "dgd", "delta", "precond", "built:muon", "built:m3", "built:dmgd",
              "adamw-then-muon"]
SCALES = st.sampled_from([0.0, 1e-30, 1.0, 1e10, 1e30])


def snapshot(optimizer):
    """The optimiser's state_dict as (JSON-able structure, copied tensors by path)."""
    tensors = {}
    tree = flatten(optimizer.state_dict(), "s", tensors)
    return tree, {k: v.clone() for k, v in tensors.items()}


def step_with(model, optimizer, grad):
    model(torch.randn(3, COLS))  # DGD records the layer's input
    model.weight.grad = grad.clone()
    if model.bias is not None:
        model.bias.grad = torch.ones(ROWS)
    optimizer.step()


@pytest.mark.parametrize("name", OPTIMIZERS)
@FAST
@given(scale=SCALES, seed=st.integers(0, 2**16), steps=st.integers(1, 3))
def test_finite_gradients_of_any_size_keep_the_weights_finite(name, scale, seed, steps):
    model, optimizer = make(name)
    grad = torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(seed)) * scale
    for _ in range(steps):
        step_with(model, optimizer, grad)
        assert torch.isfinite(model.weight).all()


@pytest.mark.parametrize("name", OPTIMIZERS)
@FAST
@given(scale=SCALES, bad=st.lists(st.tuples(st.integers(0, ROWS - 1), st.integers(0, COLS - 1),
                                           st.sampled_from([float("inf"), float("-inf"), float("nan")])),
                                 min_size=1, max_size=4))
def test_a_non_finite_gradient_is_refused_and_changes_nothing(name, scale, bad):
    model, optimizer = make(name)
    step_with(model, optimizer, torch.randn(ROWS, COLS))  # a finite step first: the state is not empty
    weights, state = [p.detach().clone() for p in model.parameters()], snapshot(optimizer)
    grad = torch.randn(ROWS, COLS) * scale
    for r, c, value in bad:
        grad[r, c] = value
    with pytest.raises(NonFiniteGradientError, match=r"parameter '(w|weight)' has a non-finite gradient"):
        step_with(model, optimizer, grad)
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    after = snapshot(optimizer)
    assert after[0] == state[0] and after[1].keys() == state[1].keys()
    assert all(torch.equal(after[1][k], state[1][k]) for k in state[1])
