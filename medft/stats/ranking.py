"""The one weighted AUROC / average-precision kernel, threshold rates, and point metrics.

Every function takes one finding's labels ``y`` (0/1, unknown rows already dropped, e.g. by
:func:`medft.stats.known_pairs`) and scores ``p``. The ``*_weighted`` kernels score many
rows of *frequency weights* ``w`` (B, N) at once from one sort of the scores: with ``w`` the
number of times each image is drawn in a bootstrap resample, the result is exactly the
metric of that resample. The point metrics are the same kernels with unit weights. The
evaluation (:mod:`medft.eval.metrics`) and the shortcut audit (:mod:`medft.data.audit`)
both use these, so an AUROC means the same everywhere in medft.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from medft.errors import ConfigError
from medft.stats.inputs import known_pairs

__all__ = [
    "RATE_NAMES",
    "WeightedFn",
    "WeightedMetric",
    "auroc",
    "auroc_weighted",
    "average_precision",
    "average_precision_weighted",
    "rate_at",
    "rate_weighted",
    "threshold_metrics",
    "weighted_form",
]

#: A weighted metric: ``(y (N,), p (N,), w (B, N)) -> (B,)`` values, NaN where undefined.
WeightedFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

RATE_NAMES = ("sensitivity", "specificity", "ppv", "npv", "accuracy", "f1")


# --- weighted kernels


def _tie_blocks(sorted_scores: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in a sorted 1-D array."""
    if sorted_scores.size == 0:
        return np.zeros(0, dtype=np.intp)
    change = np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]) + 1
    return np.concatenate(([0], change))


def _score_order(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ascending score order, the start of each tie block in it, and the sorted positives."""
    order = np.argsort(p, kind="mergesort")
    return order, _tie_blocks(p[order]), y[order] == 1.0


def _class_weights(
    w_sorted: np.ndarray, is_pos: np.ndarray, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative weight per distinct score (ascending): two (B, U) arrays."""
    pos = np.add.reduceat(np.where(is_pos, w_sorted, 0.0), starts, axis=1)
    return pos, np.add.reduceat(w_sorted, starts, axis=1) - pos


def _ranking_from(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision from per-block class weights (ascending scores)."""
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    both = (n_pos > 0) & (n_neg > 0)
    cum_neg = np.cumsum(neg, axis=1)
    # AUROC: each positive beats the negatives strictly below it and ties half of its block.
    below_or_tied = cum_neg - 0.5 * neg
    concordant = np.einsum("ij,ij->i", pos, below_or_tied)
    # AP: thresholds run from the highest score down, so a block needs the weight at or
    # above it, i.e. the total minus what lies strictly below (exact for integer weights).
    tp_at_or_above = n_pos[:, None] - np.cumsum(pos, axis=1)
    tp_at_or_above += pos
    called = n_neg[:, None] - cum_neg
    called += neg
    called += tp_at_or_above
    precision = np.zeros_like(called)
    np.divide(tp_at_or_above, called, out=precision, where=called > 0)
    weighted_precision = np.einsum("ij,ij->i", pos, precision)
    safe_pos = np.where(both, n_pos, 1.0)
    auroc_values = np.where(both, concordant / (safe_pos * np.where(both, n_neg, 1.0)), np.nan)
    ap_values = np.where(both, weighted_precision / safe_pos, np.nan)
    return auroc_values, ap_values


def auroc_weighted(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC (ties count 1/2) for each row of frequency weights ``w``.

    With ``w`` the number of times each image is drawn, this is exactly the AUROC of the
    resampled data set: sum over positive i, negative j of w_i w_j [p_i > p_j] (+1/2 on ties),
    divided by (sum of positive weights)(sum of negative weights).
    """
    if y.size == 0:
        return np.full(w.shape[0], np.nan)
    order, starts, is_pos = _score_order(y, p)
    return _ranking_from(*_class_weights(w[:, order], is_pos, starts))[0]


def average_precision_weighted(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Step-wise average precision (scikit-learn's definition) for each weight row.

    AP = sum over distinct thresholds t (high to low) of (weighted positives at t / all
    positives) x precision(score >= t).
    """
    if y.size == 0:
        return np.full(w.shape[0], np.nan)
    order, starts, is_pos = _score_order(y, p)
    return _ranking_from(*_class_weights(w[:, order], is_pos, starts))[1]


def _confusion_weighted(
    y: np.ndarray, p: np.ndarray, threshold: float, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted (tp, fp, tn, fn) per weight row; an image is called positive when p >= t."""
    called = p >= threshold
    positive = y == 1.0
    tp = w @ (positive & called).astype(np.float64)
    fp = w @ (~positive & called).astype(np.float64)
    tn = w @ (~positive & ~called).astype(np.float64)
    fn = w @ (positive & ~called).astype(np.float64)
    return tp, fp, tn, fn


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _rates(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def rate_weighted(name: str, threshold: float) -> WeightedFn:
    """The weighted form of one threshold rate (see ``RATE_NAMES``) at a fixed threshold."""
    if name not in RATE_NAMES:
        raise ConfigError(f"unknown rate {name!r}; choose one of {', '.join(RATE_NAMES)}")

    def weighted(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
        return _rates(*_confusion_weighted(y, p, threshold, w))[name]

    return weighted


# --- point metrics


def auroc(y: Any, p: Any) -> float:
    """Area under the ROC curve (ties count one half), NaN when only one class is known.

    Equals ``sklearn.metrics.roc_auc_score`` on the rows with a known label.
    """
    y_k, p_k, _ = known_pairs(y, p)
    return float(auroc_weighted(y_k, p_k, np.ones((1, y_k.size)))[0])


def average_precision(y: Any, p: Any) -> float:
    """Average precision (area under the step-wise PR curve), NaN when one class is missing.

    Equals ``sklearn.metrics.average_precision_score`` when both classes are present. With
    positives only, scikit-learn returns 1.0 whatever the model; medft reports NaN instead,
    because such a number says nothing about the model.
    """
    y_k, p_k, _ = known_pairs(y, p)
    return float(average_precision_weighted(y_k, p_k, np.ones((1, y_k.size)))[0])


def threshold_metrics(y: Any, p: Any, threshold: float) -> dict[str, Any]:
    """Confusion counts and rates at ``threshold`` (an image is positive when p >= threshold).

    Returns:
        ``{"threshold", "n", "tp", "fp", "tn", "fn", "sensitivity", "specificity", "ppv",
        "npv", "accuracy", "f1"}``; counts are ints, a rate whose denominator is zero is NaN.
    """
    y_k, p_k, _ = known_pairs(y, p)
    counts = _confusion_weighted(y_k, p_k, float(threshold), np.ones((1, y_k.size)))
    tp, fp, tn, fn = (int(c[0]) for c in counts)
    out: dict[str, Any] = {"threshold": float(threshold), "n": int(y_k.size)}
    out.update({"tp": tp, "fp": fp, "tn": tn, "fn": fn})
    out.update({k: float(v[0]) for k, v in _rates(*counts).items()})
    return out


@dataclass(frozen=True)
class WeightedMetric:
    """A metric that can score many bootstrap resamples at once from frequency weights.

    Attributes:
        name: Short name, e.g. ``"sensitivity@0.42"``.
        weighted: ``(y, p, w (B, N)) -> (B,)`` on rows with known labels.
    """

    name: str
    weighted: WeightedFn

    def __call__(self, y: Any, p: Any) -> float:
        y_k, p_k, _ = known_pairs(y, p)
        return float(self.weighted(y_k, p_k, np.ones((1, y_k.size)))[0])


def rate_at(name: str, threshold: float) -> WeightedMetric:
    """A threshold metric (``"sensitivity"``, ``"specificity"``, ``"ppv"``, ``"npv"``,
    ``"accuracy"`` or ``"f1"``) at a fixed threshold, usable with :func:`cluster_bootstrap`."""
    return WeightedMetric(f"{name}@{threshold:g}", rate_weighted(name, float(threshold)))


_BATCHED: dict[Callable[..., Any], WeightedFn] = {
    auroc: auroc_weighted,
    average_precision: average_precision_weighted,
}


def weighted_form(metric_fn: Callable[..., Any]) -> WeightedFn | None:
    """The batched (frequency-weighted) form of a metric, or None if it has none.

    :func:`auroc`, :func:`average_precision` and every :class:`WeightedMetric` have one;
    any other ``(y, p) -> float`` is recomputed once per resample by the bootstrap.
    """
    if isinstance(metric_fn, WeightedMetric):
        return metric_fn.weighted
    return _BATCHED.get(metric_fn)
