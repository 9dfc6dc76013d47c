"""``keep_state=False``: a call whose fast state is discarded skips the writes only that state holds.

Training and evaluation start every sequence from a fresh state and never read the state after it,
so the last chunk's write of every memory is dead work there. Outputs, losses and gradients must be
those of the call that keeps the state, for every layer that skips work and every model family, and
the skipped work must be real.
"""

import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nestlearn.layers.cms import CMS, CMSConfig
from nestlearn.layers.self_modifying import SelfModConfig, SelfModifyingTitans
from nestlearn.memory import MemorySpec, init_memory_state, memory_scan
from nestlearn.models import CausalLM
from nestlearn.models.lm import families, model_config_from_dict

DT = torch.float64
VOCAB = 32


def _weighted_sum(y: torch.Tensor, seed: int = 3) -> torch.Tensor:
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    return (y * w).sum()


def _grads(loss: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(t) if g is None else g
            for t, g in zip(tensors, torch.autograd.grad(loss, tensors, allow_unused=True))]


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor], tol: float = 1e-12) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x - y).abs().max().item() <= tol


SCANS = {"gd": dict(rule="gd", momentum="none"), "momentum": dict(rule="gd", momentum="titans"),
         "dgd": dict(rule="dgd", momentum="titans")}


@pytest.mark.parametrize("kind,opt", list(itertools.product(("linear", "mlp"), SCANS)))
@pytest.mark.parametrize("length,pos", [(1, 0), (7, 0), (13, 3), (16, 0), (23, 5)])
def test_scan_without_final_state_keeps_outputs_and_gradients(kind, opt, length, pos):
    spec = MemorySpec(kind=kind, chunk_size=4, **SCANS[opt])
    g = torch.Generator().manual_seed(length)
    shapes = {"W": (2, 5, 5)} if kind == "linear" else {"W1": (2, 5, 6), "W2": (2, 6, 5)}
    init = {n: (0.3 * torch.randn(*s, generator=g, dtype=DT)).requires_grad_(True) for n, s in shapes.items()}
    q, v = (torch.randn(2, 2, length, 5, generator=g, dtype=DT).requires_grad_(True) for _ in range(2))
    k = torch.nn.functional.normalize(torch.randn(2, 2, length, 5, generator=g, dtype=DT), dim=-1).requires_grad_(True)
    eta = (0.5 * torch.rand(2, 2, length, generator=g, dtype=DT)).requires_grad_(True)
    alpha = (0.8 + 0.2 * torch.rand(2, 2, length, generator=g, dtype=DT)).requires_grad_(True)
    beta = None if spec.momentum == "none" else torch.rand(2, 2, length, generator=g, dtype=DT).requires_grad_(True)
    state = init_memory_state(spec, init, 2)
    inputs = [*init.values(), q, k, v, eta, alpha] + ([] if beta is None else [beta])
    kept, full_state = memory_scan(spec, state, q, k, v, eta, alpha, beta, pos=pos)
    dropped, empty = memory_scan(spec, state, q, k, v, eta, alpha, beta, pos=pos, final_state=False)
    assert empty == {} and full_state
    assert torch.equal(kept, dropped)
    _assert_same(_grads(_weighted_sum(kept), inputs), _grads(_weighted_sum(dropped), inputs))
    assert memory_scan(spec, state, q, k, v, eta, alpha, beta, pos=pos, outputs=False, final_state=False) == (None, {})


def _cms(variant: str, signal: str) -> CMS:
    torch.manual_seed(0)
    cms = CMS(8, CMSConfig(chunk_sizes=(12, 4, 2), variant=variant, signal=signal, hidden_mult=2,
                           eta_init=0.5)).to(DT)
    with torch.no_grad():
        for level in cms.levels:
            level.eta.weight.normal_(0, 0.3)
            level.initial["W1"].normal_(0, 0.1)
    return cms


@pytest.mark.parametrize("variant,signal", [("sequential", "kv"), ("nested", "kv"), ("independent", "kv"),
                                            ("sequential", "lss"), ("nested", "lss")])
@pytest.mark.parametrize("length,pos", [(5, 0), (13, 0), (24, 0), (17, 7)])
def test_cms_without_state_keeps_outputs_and_gradients(variant, signal, length, pos):
    cms = _cms(variant, signal)
    g = torch.Generator().manual_seed(length)
    x = torch.randn(2, length, 8, generator=g, dtype=DT, requires_grad=True)
    u = {i: torch.randn(2, length, 8, generator=g, dtype=DT) for i in cms.lss_levels} if signal == "lss" else None
    state = None
    if pos:  # a carried state, pending writes included
        with torch.no_grad():
            _, state = cms(torch.randn(2, pos, 8, generator=g, dtype=DT), None, 0,
                           u={i: torch.randn(2, pos, 8, generator=g, dtype=DT) for i in cms.lss_levels} if u else None)
    kept, full_state = cms(x, state, pos, u=u)
    dropped, empty = cms(x, state, pos, u=u, keep_state=False)
    assert empty == {} and full_state
    # A boundary read shares its products with the chunk's keys; without the last chunk's write it is
    # computed alone, so the two agree to rounding, not bit for bit.
    _assert_same([kept], [dropped])
    inputs = [x, *cms.parameters()]
    _assert_same(_grads(_weighted_sum(kept), inputs), _grads(_weighted_sum(dropped), inputs))


@pytest.mark.parametrize("changes", [{}, {"read": "boundary"}, {"momentum": "off", "inner_rule": "gd"},
                                     {"adaptive_q": True, "heads": 2, "memory_hidden": 12}])
@pytest.mark.parametrize("length,pos", [(3, 0), (16, 0), (21, 0), (19, 6)])
def test_self_modifying_without_state_keeps_outputs_and_gradients(changes, length, pos):
    torch.manual_seed(0)
    layer = SelfModifyingTitans(8, SelfModConfig(chunk_size_memory=4, chunk_size_other=8, memory_out_init=0.1,
                                                 **changes)).to(DT)
    g = torch.Generator().manual_seed(length)
    x = torch.randn(2, length, 8, generator=g, dtype=DT, requires_grad=True)
    with torch.no_grad():
        state = layer(torch.randn(2, pos, 8, generator=g, dtype=DT))[1] if pos else None
    kept, full_state = layer(x, state, pos)
    dropped, empty = layer(x, state, pos, keep_state=False)
    assert empty == {} and full_state
    _assert_same([kept], [dropped])  # to rounding: a boundary read's last chunk is computed alone (above)
    inputs = [x, *layer.parameters()]
    _assert_same(_grads(_weighted_sum(kept), inputs), _grads(_weighted_sum(dropped), inputs))


TINY = {
    "transformer": {"n_heads": 2},
    "lstm": {},
    "hope": {"selfmod": {"chunk_size_memory": 4, "chunk_size_other": 8}, "cms": {"chunk_sizes": [16, 4]}},
    "hope_attention": {"n_heads": 2, "cms": {"chunk_sizes": [16, 4]}},
    **{f: {"n_heads": 2, "chunk_size": 4} for f in ("titans", "linear_attention", "deltanet", "gated_deltanet")},
    **{f: {"n_heads": 2, "chunk_size": 4, "window": 5, "n_persistent": 2} for f in ("titans_mag", "titans_mal",
                                                                                    "titans_mac")},
}


# Hope whose CMS levels learn from the model's own loss runs through the lss sequence driver.
VARIANTS = {"hope_lss": ("hope", {**TINY["hope"], "cms": {"chunk_sizes": [8, 4], "signal": "lss"}})}


def tiny(name: str) -> CausalLM:
    family, changes = VARIANTS.get(name, (name, TINY.get(name)))
    torch.manual_seed(0)
    cfg = {"family": family, "vocab_size": VOCAB, "d_model": 16, "n_layers": 2, "max_seq_len": 64, **changes}
    return CausalLM(model_config_from_dict(cfg)).to(DT)


def test_every_family_is_covered():
    assert set(TINY) == set(families())


@pytest.mark.parametrize("name", sorted(TINY) + sorted(VARIANTS))
def test_model_without_state_keeps_logits_loss_and_gradients(name):
    model = tiny(name)
    tokens = torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        carried = model(tokens[:, :6]).state
    for state in (None, carried):
        kept = model(tokens[:, 6:], state=state, targets=tokens[:, 6:])
        dropped = model(tokens[:, 6:], state=state, targets=tokens[:, 6:], keep_state=False)
        assert dropped.state is None and kept.state is not None
        _assert_same([kept.logits, kept.loss], [dropped.logits, dropped.loss])  # CMS: boundary reads, above
        params = list(model.parameters())
        _assert_same(_grads(kept.loss, params), _grads(dropped.loss, params))


def _flops(model: CausalLM, tokens: torch.Tensor, keep_state: bool) -> int:
    with FlopCounterMode(display=False) as counter:
        model(tokens, targets=tokens, keep_state=keep_state).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


@pytest.mark.parametrize("family", ["hope", "hope_attention", "titans", "transformer"])
def test_dropping_the_state_skips_work_only_where_a_write_is_dead(family):
    """Memories write after their last chunk only for the state: that work goes; attention has none."""
    model = tiny(family)
    tokens = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(2))
    kept, dropped = _flops(model, tokens, True), _flops(model, tokens, False)
    if family == "transformer":
        assert dropped == kept
    else:
        assert dropped < kept
