"""Paired comparisons of two models scored on the same images: DeLong and paired bootstrap.

``medft cv compare`` reports both. The paired bootstrap scores both models on one shared
set of patient resamples (:mod:`medft.stats.bootstrap`), so their correlation is kept; the
DeLong test treats images as independent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from medft.stats.bootstrap import (
    bootstrap_counts,
    codes_of_known,
    percentile_interval,
    resampled_values,
)
from medft.stats.inputs import check_ci, known_pairs
from medft.stats.ranking import auroc

__all__ = ["DeLongResult", "PairedComparison", "delong_test", "paired_bootstrap"]


@dataclass(frozen=True)
class DeLongResult:
    """Paired DeLong comparison of two AUROCs on the same images (difference = a - b)."""

    auc_a: float
    auc_b: float
    difference: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float
    n_positive: int
    n_negative: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict for JSON."""
        return asdict(self)


def _delong_components(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong structural components (V10 per positive, V01 per negative) for each model.

    Uses midranks (Sun & Xu 2014): for a positive x, V10 = P(x > Y) + P(x = Y)/2 equals
    (its rank among all scores - its rank among positives) / n_neg; symmetrically for V01.
    """
    pos = y == 1.0
    m, n = int(pos.sum()), int((~pos).sum())
    v10 = np.empty((scores.shape[0], m))
    v01 = np.empty((scores.shape[0], n))
    for k, s in enumerate(scores):
        x, z = s[pos], s[~pos]
        ranks_all = stats.rankdata(np.concatenate([x, z]))
        v10[k] = (ranks_all[:m] - stats.rankdata(x)) / n
        v01[k] = 1.0 - (ranks_all[m:] - stats.rankdata(z)) / m
    return v10, v01


def delong_test(y: Any, p_a: Any, p_b: Any, *, ci: float = 0.95) -> DeLongResult:
    """Paired DeLong test of AUROC(a) = AUROC(b) on the same images, in O(n log n).

    Images are treated as independent: for several images per patient prefer
    :func:`paired_bootstrap` with patient groups (the DeLong interval is then too narrow).
    Undefined cases (one class, fewer than two images of a class) give NaN, not errors.
    """
    check_ci(ci)
    y_k, a_k, _ = known_pairs(y, p_a, name="model a")
    b_k = known_pairs(y, p_b, name="model b")[1]
    m = int(y_k.sum())
    n = int(y_k.size - m)
    nan = math.nan
    if m < 2 or n < 2:
        auc_a, auc_b = auroc(y_k, a_k), auroc(y_k, b_k)
        return DeLongResult(auc_a, auc_b, auc_a - auc_b, nan, nan, nan, nan, nan, m, n)
    v10, v01 = _delong_components(np.vstack([a_k, b_k]), y_k)
    auc_a, auc_b = (float(v) for v in v10.mean(axis=1))
    cov = np.cov(v10) / m + np.cov(v01) / n
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    diff = auc_a - auc_b
    if var <= 1e-15:
        p_value = 1.0 if abs(diff) < 1e-15 else nan
        return DeLongResult(auc_a, auc_b, diff, 0.0, nan, p_value, diff, diff, m, n)
    se = math.sqrt(var)
    z = diff / se
    p_value = float(2.0 * stats.norm.sf(abs(z)))
    half = float(stats.norm.ppf(0.5 + ci / 2.0)) * se
    return DeLongResult(auc_a, auc_b, diff, se, z, p_value, diff - half, diff + half, m, n)


@dataclass(frozen=True)
class PairedComparison:
    """Patient-level paired bootstrap of metric(a) - metric(b) on the same images."""

    value_a: float
    value_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    n_boot_valid: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict for JSON."""
        return asdict(self)


def paired_bootstrap(
    y: Any,
    p_a: Any,
    p_b: Any,
    groups: Any,
    *,
    metric_fn: Callable[[np.ndarray, np.ndarray], float] = auroc,
    n: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> PairedComparison:
    """Compare two models' metric on the same images with one shared patient resample.

    The interval is the percentile interval of the resampled differences; the two-sided
    p-value is ``min(1, 2 (k + 1) / (B + 1))`` where k counts resampled differences on the
    far side of zero (<= 0 for a positive difference) and B the valid resamples.
    """
    check_ci(ci)
    y_k, a_k, known = known_pairs(y, p_a, name="model a")
    b_k = known_pairs(y, p_b, name="model b")[1]
    codes, n_groups = codes_of_known(groups, known)
    counts = bootstrap_counts(n_groups, n=n, seed=seed)
    value_a, value_b = float(metric_fn(y_k, a_k)), float(metric_fn(y_k, b_k))
    diffs = resampled_values(y_k, a_k, codes, counts, metric_fn) - resampled_values(
        y_k, b_k, codes, counts, metric_fn
    )
    low, high, n_valid = percentile_interval(diffs, ci)
    diff = value_a - value_b
    finite = diffs[np.isfinite(diffs)]
    if n_valid == 0 or not math.isfinite(diff):
        p_value = math.nan
    else:
        far = int((finite <= 0).sum()) if diff > 0 else int((finite >= 0).sum())
        if diff == 0:
            far = min(int((finite <= 0).sum()), int((finite >= 0).sum()))
        p_value = min(1.0, 2.0 * (far + 1) / (n_valid + 1))
    return PairedComparison(value_a, value_b, diff, low, high, p_value, n_valid)
