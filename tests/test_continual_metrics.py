"""Continual-learning metrics on the hand-made matrices of tasks.md §9.1 (expected values from there)."""

import numpy as np
import pytest

from nestlearn.errors import ConfigError
from nestlearn.eval.continual.metrics import (
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    continual_summary,
    first_minus_last_forgetting,
    forgetting,
    forward_transfer,
    run_protocol,
)

MATRICES = {
    "A": {"R": [[0.90, 0.10, 0.20], [0.60, 0.80, 0.30], [0.50, 0.70, 0.95]], "b": [0.1, 0.1, 0.1],
              "acc": 2.15 / 3, "bwt": -0.25, "fwt": 0.10, "f": 0.25, "fml": 0.25, "aia": 0.772222},
    "B": {"R": [[0.70, 0.05, 0.10, 0.00], [0.90, 0.80, 0.20, 0.10], [0.60, 0.85, 0.90, 0.30],
                 [0.65, 0.40, 0.70, 1.00]], "b": [0.0, 0.1, 0.1, 0.25],
              "acc": 0.6875, "bwt": -0.65 / 3, "fwt": 0.1 / 3, "f": 0.30, "fml": 0.65 / 3, "aia": 0.755208},
    "C": {"R": [[1, 0], [1, 1]], "b": [0, 0], "acc": 1.0, "bwt": 0.0, "fwt": 0.0, "f": 0.0, "fml": 0.0, "aia": 1.0},
    "D": {"R": [[-1.50, -3.00], [-1.80, -1.40]], "b": [-8, -8], "acc": -1.60, "bwt": -0.30, "fwt": 5.00, "f": 0.30,
              "fml": 0.30, "aia": -1.55},
    "E": {"R": [[0.90, 0.95, 0.10], [0.85, 0.80, 0.20], [0.80, 0.70, 0.90]], "b": [0.1, 0.1, 0.1],
              "acc": 0.80, "bwt": -0.10, "fwt": 0.475, "f": 0.10, "fml": 0.10, "aia": None},
}


@pytest.mark.parametrize("name", sorted(MATRICES))
def test_metrics_match_the_hand_made_matrices(name):
    m = MATRICES[name]
    R, b = m["R"], m["b"]
    assert average_accuracy(R) == pytest.approx(m["acc"], abs=1e-6)
    assert backward_transfer(R) == pytest.approx(m["bwt"], abs=1e-6)
    assert forward_transfer(R, b) == pytest.approx(m["fwt"], abs=1e-6)
    assert forgetting(R) == pytest.approx(m["f"], abs=1e-6)
    assert first_minus_last_forgetting(R) == pytest.approx(m["fml"], abs=1e-6)
    if m["aia"] is not None:
        assert average_incremental_accuracy(R) == pytest.approx(m["aia"], abs=1e-6)


def test_forgetting_variants_differ_only_when_a_task_peaks_before_training():
    E = MATRICES["E"]["R"]
    assert forgetting(E, "max_after") == pytest.approx(0.10, abs=1e-6)
    assert forgetting(E, "max_all") == pytest.approx(0.175, abs=1e-6)
    for name in "ABCD":
        R = MATRICES[name]["R"]
        assert forgetting(R, "max_all") == pytest.approx(forgetting(R, "max_after"), abs=1e-12)


def test_forgetting_uses_the_peak_not_the_diagonal():
    # Matrix B: f_1 = 0.90 - 0.65 uses the peak after task 2, so F != -BWT.
    R = MATRICES["B"]["R"]
    assert forgetting(R) == pytest.approx(0.30, abs=1e-6)
    assert -backward_transfer(R) == pytest.approx(0.216667, abs=1e-6)


def test_single_task_and_bad_arguments_raise_naming_the_parameter():
    R1 = [[0.5]]
    assert average_accuracy(R1) == 0.5 and average_incremental_accuracy(R1) == 0.5
    for fn in (backward_transfer, forgetting, first_minus_last_forgetting):
        with pytest.raises(ValueError, match="R"):
            fn(R1)
    with pytest.raises(ValueError, match="R"):
        forward_transfer(R1, [0.1])
    with pytest.raises(ConfigError, match="^b:"):
        forward_transfer(MATRICES["A"]["R"], None)
    with pytest.raises(ConfigError, match="^b:"):
        forward_transfer(MATRICES["A"]["R"], [0.1, 0.1])
    with pytest.raises(ConfigError, match="^R:"):
        average_accuracy([[1.0, 2.0]])
    with pytest.raises(ConfigError, match="variant"):
        forgetting(MATRICES["A"]["R"], "max_before")


def test_summary_names_the_variants_and_stores_R_and_b():
    s = continual_summary(MATRICES["E"]["R"], MATRICES["E"]["b"])
    assert s["forgetting_max_after"] == pytest.approx(0.10) and s["forgetting_max_all"] == pytest.approx(0.175)
    assert s["R"] == MATRICES["E"]["R"] and s["b"] == MATRICES["E"]["b"]
    assert continual_summary(MATRICES["A"]["R"])["fwt"] is None
    single = continual_summary([[0.7]])
    assert single["acc"] == 0.7 and single["bwt"] is None and single["forgetting_max_after"] is None


def test_run_protocol_fills_R_row_by_row_and_b_before_training():
    target = np.array(MATRICES["A"]["R"])
    stage = {"i": -1}

    def train_on(i):
        stage["i"] = i

    def score_on(j):
        return 0.1 if stage["i"] < 0 else float(target[stage["i"], j])

    R, b = run_protocol(train_on, score_on, 3)
    np.testing.assert_allclose(R, target)
    np.testing.assert_allclose(b, MATRICES["A"]["b"])
