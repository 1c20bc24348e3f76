"""Operating points: Youden J, target sensitivity/specificity, checkpoint-safe storage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from medft.errors import ConfigError, DataError
from medft.eval import operating as O
from medft.eval.metrics import threshold_metrics

NEG = [0.1, 0.2, 0.3, 0.6]
POS = [0.4, 0.7, 0.8, 0.9]


def _example() -> tuple[np.ndarray, np.ndarray]:
    return np.r_[np.zeros(4), np.ones(4)], np.array(NEG + POS)


def test_youden_picks_the_expected_threshold_and_breaks_ties_towards_sensitivity() -> None:
    # Thresholds (p >= t): 0.9 -> J .25; 0.8 -> .5; 0.7 -> .75; 0.6 -> .5; 0.4 -> .75; 0.3 -> .5.
    # J ties at 0.7 (sens .75, spec 1) and 0.4 (sens 1, spec .75): the higher sensitivity wins.
    y, p = _example()
    op = O.choose_threshold(y, p)
    assert op == O.OperatingPoint(0.4, 1.0, 0.75, "youden", None)
    # Without the tie (the 0.4 positive moved below every negative) 0.7 is the unique best.
    p2 = p.copy()
    p2[4] = 0.05
    assert O.choose_threshold(y, p2).threshold == 0.7


def test_youden_reaches_the_best_j_of_sklearn_roc_curve() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = (rng.random(150) < 0.4).astype(float)
        p = np.round(np.clip(0.3 * y + rng.random(150), 0, 1), 2)
        fpr, tpr, _ = roc_curve(y, p)
        op = O.choose_threshold(y, p)
        assert op.sensitivity + op.specificity - 1 == pytest.approx(np.max(tpr - fpr))
        at = threshold_metrics(y, p, op.threshold)
        assert (at["sensitivity"], at["specificity"]) == (op.sensitivity, op.specificity)


@pytest.mark.parametrize(
    ("method", "target"),
    [("sensitivity", t) for t in (0.5, 0.8, 0.95, 1.0)]
    + [("specificity", t) for t in (0.5, 0.9, 1.0)],
)
def test_target_is_achieved_with_the_best_other_rate(method: str, target: float) -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.3).astype(float)
    p = np.clip(0.3 * y + rng.random(400), 0, 1)
    op = O.choose_threshold(y, p, method=method, target=target)  # type: ignore[arg-type]
    at = threshold_metrics(y, p, op.threshold)
    assert at[method] >= target
    assert (op.sensitivity, op.specificity) == (at["sensitivity"], at["specificity"])
    # One candidate further in the direction that would improve the other rate (a higher
    # threshold for specificity, a lower one for sensitivity) loses the target.
    others = np.unique(p[p > op.threshold] if method == "sensitivity" else p[p < op.threshold])
    if others.size:
        neighbour = others[0] if method == "sensitivity" else others[-1]
        assert threshold_metrics(y, p, neighbour)[method] < target


def test_specificity_one_can_mean_calling_nothing_positive() -> None:
    y = np.array([0, 1, 0, 1.0])
    p = np.array([0.9, 0.8, 0.1, 0.2])
    op = O.choose_threshold(y, p, method="specificity", target=1.0)
    assert op.threshold > 0.9 and op.sensitivity == 0.0 and op.specificity == 1.0


def test_choose_thresholds_per_finding_with_fallback() -> None:
    y, p = _example()
    y2 = np.c_[y, np.zeros_like(y), y]
    y2[0, 2] = np.nan
    p2 = np.c_[p, p, p]
    with pytest.warns(UserWarning, match="'Rare' falls back to 0.5"):
        points = O.choose_thresholds(y2, p2, ["Effusion", "Rare", "Nodule"])
    assert points["Effusion"].threshold == 0.4
    assert points["Rare"].method == "fallback" and math.isnan(points["Rare"].sensitivity)
    # Dropping the unknown row (the 0.1 negative) makes 0.4 worse (spec 2/3): 0.7 wins.
    assert (points["Nodule"].threshold, points["Nodule"].specificity) == (0.7, 1.0)
    with pytest.raises(DataError, match="'Rare'"):
        O.choose_thresholds(y2, p2, ["Effusion", "Rare", "Nodule"], fallback=None)


def test_operating_points_round_trip_through_a_weights_only_checkpoint(tmp_path) -> None:
    import torch

    y, p = _example()
    points = O.choose_thresholds(
        np.c_[y, y], np.c_[p, p], ["a", "b"], method="sensitivity", target=0.75
    )
    as_dict = O.operating_points_to_dict(points)
    for entry in as_dict.values():
        assert all(isinstance(v, (float, str, type(None))) for v in entry.values())
    torch.save({"operating_points": as_dict}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert O.operating_points_from_dict(loaded["operating_points"]) == points
    assert points["a"].target == 0.75 and points["a"].threshold == 0.7


def test_bad_methods_and_data_raise() -> None:
    y, p = _example()
    with pytest.raises(ConfigError, match="'f1'"):
        O.choose_threshold(y, p, method="f1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs a target"):
        O.choose_threshold(y, p, method="sensitivity")
    with pytest.raises(ConfigError, match="needs a target"):
        O.choose_threshold(y, p, method="specificity", target=1.5)
    with pytest.raises(ConfigError, match="takes no target"):
        O.choose_threshold(y, p, target=0.9)
    with pytest.raises(DataError, match="no positive"):
        O.choose_threshold(np.zeros(3), [0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match="lacks key"):
        O.OperatingPoint.from_dict({"threshold": 0.5})
