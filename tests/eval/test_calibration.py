"""Calibration metrics and temperature scaling, checked against scikit-learn and known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

from medft.errors import ConfigError, DataError
from medft.eval import calibration as C
from medft.eval.metrics import auroc


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _calibrated_sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """True logits and labels drawn from them: sigmoid(z) is perfectly calibrated."""
    z = rng.normal(0.0, 2.0, n)
    y = (rng.random(n) < _sigmoid(z)).astype(float)
    return z, y


def test_brier_matches_sklearn_and_drops_unknown_labels() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = (rng.random(100) < 0.3).astype(float)
        p = rng.random(100)
        assert C.brier_score(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    y_nan = np.array([1.0, np.nan, 0.0])
    assert C.brier_score(y_nan, [0.8, 0.0, 0.4]) == pytest.approx((0.2**2 + 0.4**2) / 2)
    assert math.isnan(C.brier_score([np.nan], [0.5]))


def test_reliability_bins_match_sklearn_calibration_curve() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(3000) < 0.4).astype(float)
    p = rng.random(3000) ** 2  # continuous: no probability sits on a bin edge
    bins = C.reliability_bins(y, p, n_bins=10)
    filled = bins.counts > 0
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(bins.observed_frequency[filled], prob_true, atol=1e-12)
    np.testing.assert_allclose(bins.mean_predicted[filled], prob_pred, atol=1e-12)
    assert bins.counts.sum() == 3000
    assert len(bins.edges) == 11
    assert len(bins.to_dict()["counts"]) == 10


def test_reliability_bins_hand_example_and_edges() -> None:
    # Bins [0, .5) and [.5, 1]: 0.5 and 1.0 land in the upper bin.
    bins = C.reliability_bins([0, 1, 1, 0, np.nan], [0.1, 0.3, 0.5, 1.0, 0.9], n_bins=2)
    assert bins.counts.tolist() == [2, 2]
    np.testing.assert_allclose(bins.mean_predicted, [0.2, 0.75])
    np.testing.assert_allclose(bins.observed_frequency, [0.5, 0.5])
    # ECE = 2/4 * |0.5 - 0.2| + 2/4 * |0.5 - 0.75| = 0.15 + 0.125
    ece = C.expected_calibration_error([0, 1, 1, 0], [0.1, 0.3, 0.5, 1.0], n_bins=2)
    assert ece == pytest.approx(0.275)


def test_quantile_bins_hold_about_equal_counts() -> None:
    rng = np.random.default_rng(2)
    p = rng.random(1000) ** 3
    bins = C.reliability_bins(np.zeros(1000), p, n_bins=10, strategy="quantile")
    assert bins.counts.min() >= 95 and bins.counts.max() <= 105
    assert bins.edges[0] == 0.0 and bins.edges[-1] == 1.0


def test_ece_small_when_calibrated_large_when_not() -> None:
    rng = np.random.default_rng(3)
    z, y = _calibrated_sample(rng, 40_000)
    calibrated = C.expected_calibration_error(y, _sigmoid(z))
    overconfident = C.expected_calibration_error(y, _sigmoid(3.0 * z))
    shifted = C.expected_calibration_error(y, np.clip(_sigmoid(z) + 0.15, 0, 1))
    assert calibrated < 0.015
    assert overconfident > 0.08
    assert shifted > 0.12
    assert C.expected_calibration_error(y, _sigmoid(z), strategy="quantile") < 0.015


def test_calibration_input_errors() -> None:
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        C.expected_calibration_error([0, 1], [-2.0, 3.0])
    with pytest.raises(ConfigError, match="'equal'"):
        C.reliability_bins([0, 1], [0.1, 0.9], strategy="equal")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=">= 1"):
        C.reliability_bins([0, 1], [0.1, 0.9], n_bins=0)
    assert math.isnan(C.expected_calibration_error([np.nan], [0.3]))


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(true_t: float) -> None:
    rng = np.random.default_rng(4)
    z, y = _calibrated_sample(rng, 30_000)
    observed = z * true_t  # a model whose logits are off by a factor T
    fitted = C.fit_temperature(observed, y)
    assert fitted == pytest.approx(true_t, rel=0.05)
    fixed = C.apply_temperature(observed, fitted)
    assert C.expected_calibration_error(y, fixed) < 0.015
    assert log_loss(y, fixed) <= log_loss(y, _sigmoid(observed)) + 1e-12


def test_temperature_from_probabilities_and_multilabel_shared() -> None:
    rng = np.random.default_rng(5)
    z, y = _calibrated_sample(rng, 20_000)
    probs = _sigmoid(2.0 * z).reshape(-1, 2)
    labels = y.reshape(-1, 2).copy()
    labels[::7, 1] = np.nan  # unknown labels are ignored
    fitted = C.fit_temperature(probs, labels, kind="probs")
    assert fitted == pytest.approx(2.0, rel=0.05)
    rescaled = C.apply_temperature(probs, fitted, kind="probs")
    assert rescaled.shape == probs.shape
    # Temperature never changes the ranking, so AUROC is untouched.
    known = ~np.isnan(labels[:, 1])
    assert auroc(labels[known, 1], rescaled[known, 1]) == pytest.approx(
        auroc(labels[known, 1], probs[known, 1]), abs=1e-12
    )


def test_temperature_one_is_the_identity_and_probabilities_round_trip() -> None:
    z = np.linspace(-6, 6, 25)
    np.testing.assert_allclose(C.apply_temperature(z, 1.0), _sigmoid(z), atol=1e-12)
    p = _sigmoid(z)
    np.testing.assert_allclose(C.apply_temperature(p, 1.0, kind="probs"), p, atol=1e-9)
    # Clipping keeps 0 and 1 finite.
    assert np.isfinite(C.probs_to_logits([0.0, 1.0])).all()
    assert C.binary_nll(np.zeros(4), np.array([0, 1, 0, 1.0])) == pytest.approx(math.log(2))


def test_temperature_errors() -> None:
    with pytest.raises(DataError, match="only one class"):
        C.fit_temperature([0.1, 2.0, -1.0], [1, 1, np.nan])
    with pytest.raises(DataError, match="differ in shape"):
        C.fit_temperature(np.zeros((4, 2)), np.zeros(8))
    with pytest.raises(DataError, match="outside"):
        C.fit_temperature([2.0, 0.5], [1, 0], kind="probs")
    with pytest.raises(ConfigError, match="positive"):
        C.apply_temperature([0.0], 0.0)
    with pytest.raises(ConfigError, match="'scores'"):
        C.apply_temperature([0.0], 1.0, kind="scores")  # type: ignore[arg-type]
