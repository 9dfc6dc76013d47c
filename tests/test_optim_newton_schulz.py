"""Newton–Schulz orthogonalisation (decisions.md D20)."""

from __future__ import annotations

import pytest
import torch

from nestlearn.errors import ConfigError
from nestlearn.optim import CUBIC_COEFFICIENTS, newton_schulz
from nestlearn.optim.newton_schulz import validate_ns_args




def _singular_values(shape: tuple[int, int], seed: int) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return torch.linalg.svdvals(newton_schulz(x))


@pytest.mark.parametrize("shape", [(256, 256), (1024, 256), (256, 1024)])
def test_singular_values_of_large_gaussian_matrices(shape):
    for seed in range(2):
        sv = _singular_values(shape, seed)
        assert sv.median() > 0.8
        assert sv.max() <= 1.25
        if shape[0] != shape[1]:
            # Square matrices keep a few near-zero singular values (D20), so only rectangular ones
            # are checked from below.
            assert sv.min() >= 0.6


@pytest.mark.parametrize("shape", [(64, 256), (256, 64)])
def test_d20_every_singular_value_in_range_for_20_seeds(shape):
    for seed in range(20):
        sv = _singular_values(shape, seed)
        assert 0.6 <= sv.min() and sv.max() <= 1.25, (seed, sv.min().item(), sv.max().item())


def test_zero_matrix_maps_to_zero():
    out = newton_schulz(torch.zeros(8, 5))
    assert torch.equal(out, torch.zeros(8, 5))


def test_scale_invariant_and_transpose_equivariant():
    x = torch.randn(24, 40, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(newton_schulz(1000.0 * x), newton_schulz(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(newton_schulz(x.T), newton_schulz(x).T)


def test_batched_over_leading_dims_equals_loop():
    x = torch.randn(2, 3, 12, 20, generator=torch.Generator().manual_seed(1))
    out = newton_schulz(x)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(out[i, j], newton_schulz(x[i, j]))


def test_dtype_is_preserved_and_compute_is_float32():
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(2))
    out = newton_schulz(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), newton_schulz(x), atol=2e-2, rtol=2e-2)
    assert newton_schulz(x.double()).dtype == torch.float64


def test_one_step_matches_the_quintic_formula():
    x = torch.randn(6, 9, generator=torch.Generator().manual_seed(3))
    a, b, c = 3.4445, -4.7750, 2.0315
    z = x / (torch.linalg.matrix_norm(x) + 1e-7)
    gram = z @ z.T
    expected = a * z + (b * gram + c * gram @ gram) @ z
    torch.testing.assert_close(newton_schulz(x, steps=1), expected)


def test_cubic_coefficients_converge_more_slowly():
    x = torch.randn(128, 128, generator=torch.Generator().manual_seed(4))
    quintic = torch.linalg.svdvals(newton_schulz(x)).median()
    cubic = torch.linalg.svdvals(newton_schulz(x, coefficients=CUBIC_COEFFICIENTS)).median()
    assert cubic < 0.6 < quintic


def test_rejects_vectors_and_bad_settings():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        newton_schulz(torch.ones(5))
    with pytest.raises(ConfigError, match="ns_steps"):
        validate_ns_args(-1, (1.0, 2.0, 3.0))
    with pytest.raises(ConfigError, match="ns_coefficients"):
        validate_ns_args(5, (1.0, 2.0))
