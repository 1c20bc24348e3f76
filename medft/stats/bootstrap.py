"""The one patient-cluster bootstrap: resample patients, score every resample at once.

Resampling G patients with replacement is the same as giving every image the number of
times its patient was drawn, so a resample is a row of *frequency weights* and the weighted
kernels of :mod:`medft.stats.ranking` score a whole block of resamples from one sort of the
scores. The draws depend only on ``(number of patients, n, seed)``: every finding, metric
and model scored with the same ``counts`` matrix sees the same resamples, which is what
makes macro means and paired differences honest. docs/statistics.md explains the method.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from medft.errors import ConfigError, DataError
from medft.stats.inputs import check_ci, known_pairs
from medft.stats.ranking import (
    WeightedFn,
    _class_weights,
    _ranking_from,
    _rates,
    _score_order,
    weighted_form,
)

__all__ = [
    "CI",
    "bootstrap_counts",
    "cluster_bootstrap",
    "codes_of_known",
    "factorize_groups",
    "patient_codes",
    "percentile_interval",
    "resample_confusion",
    "resample_metrics",
    "resample_ranking",
    "resampled_values",
    "weight_blocks",
]

#: Resamples are drawn in fixed blocks so the result does not depend on the data size.
_DRAW_BLOCK = 64
#: Upper bound on the elements of one (resamples x images) weight block (16 MiB of float64).
_WEIGHT_BLOCK_ELEMENTS = 2**21


@dataclass(frozen=True)
class CI:
    """A point estimate with a bootstrap percentile interval.

    Attributes:
        value: The metric on the data as given (not the bootstrap mean).
        ci_low: Lower percentile of the valid resampled values (NaN if none).
        ci_high: Upper percentile.
        n_boot_valid: Resamples where the metric was defined (e.g. both classes drawn).
    """

    value: float
    ci_low: float
    ci_high: float
    n_boot_valid: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain ``{"value", "ci_low", "ci_high", "n_boot_valid"}`` for metrics.json."""
        return asdict(self)


def patient_codes(groups: Any, n_rows: int) -> tuple[np.ndarray, int]:
    """Integer code per row (patients in sorted key order) and the number of patients.

    ``groups=None`` makes every row its own cluster (an image-level bootstrap).

    Raises:
        DataError: the length differs from ``n_rows`` or a patient key is missing.
    """
    if groups is None:
        return np.arange(n_rows, dtype=np.intp), n_rows
    codes, keys = factorize_groups(groups, n_rows)
    return codes, keys.size


def codes_of_known(groups: Any, known: np.ndarray) -> tuple[np.ndarray, int]:
    """:func:`patient_codes` for the rows with a known label (``known`` is a mask)."""
    if groups is None:
        return patient_codes(None, int(known.sum()))
    keys = np.asarray(groups, dtype=object).reshape(-1)
    if keys.size != known.size:
        raise DataError(f"patient groups have {keys.size} entries for {known.size} rows")
    return patient_codes(keys[known], int(known.sum()))


def factorize_groups(groups: Any, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes per row and the sorted distinct keys (as str) of a patient-key column."""
    keys = pd.Series(np.asarray(groups, dtype=object).reshape(-1))
    if keys.size != n_rows:
        raise DataError(f"patient groups have {keys.size} entries for {n_rows} rows")
    missing = np.flatnonzero(keys.isna().to_numpy())
    if missing.size:
        raise DataError(
            f"patient key missing at row {int(missing[0])} ({missing.size} rows in all); "
            "every image needs a patient id for a patient-level bootstrap"
        )
    codes, uniques = pd.factorize(keys.astype(str), sort=True)
    return codes.astype(np.intp), np.asarray(uniques, dtype=object)


def bootstrap_counts(n_groups: int, *, n: int, seed: int) -> np.ndarray:
    """How often each of ``n_groups`` patients is drawn in each of ``n`` resamples.

    Each resample draws ``n_groups`` patients uniformly with replacement. The draws come in
    fixed blocks from ``numpy.random.default_rng(seed)``, so the same ``(n_groups, n, seed)``
    always gives the same matrix, whatever the findings or the number of images.

    Returns:
        int32 array of shape ``(n, n_groups)``; every row sums to ``n_groups``. It takes
        4 n G bytes (1000 resamples of 30,000 patients: 120 MB).
    """
    if n < 0:
        raise ConfigError(f"number of bootstrap resamples must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    counts = np.zeros((n, n_groups), dtype=np.int32)
    if n_groups == 0:
        return counts
    for start in range(0, n, _DRAW_BLOCK):
        stop = min(n, start + _DRAW_BLOCK)
        draws = rng.integers(0, n_groups, size=(stop - start, n_groups))
        flat = (draws + (np.arange(stop - start) * n_groups)[:, None]).ravel()
        counts[start:stop] = np.bincount(flat, minlength=(stop - start) * n_groups).reshape(
            stop - start, n_groups
        )
    return counts


def weight_blocks(counts: np.ndarray, codes: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows of counts, image weights (b, N))`` in memory-bounded blocks."""
    n_boot = counts.shape[0]
    step = max(1, _WEIGHT_BLOCK_ELEMENTS // max(codes.size, 1))
    for start in range(0, n_boot, step):
        block = slice(start, min(n_boot, start + step))
        yield block, counts[block][:, codes].astype(np.float64)


def resample_metrics(
    y: np.ndarray,
    p: np.ndarray,
    codes: np.ndarray,
    counts: np.ndarray,
    metrics: Mapping[str, WeightedFn],
) -> dict[str, np.ndarray]:
    """Evaluate weighted metrics on every resample described by ``counts``.

    Args:
        y: Known labels (0/1), e.g. from :func:`known_pairs`.
        p: Scores for the same rows.
        codes: Patient code of each row (index into the columns of ``counts``).
        counts: ``(B, G)`` draws per patient from :func:`bootstrap_counts`.
        metrics: Name -> weighted function.

    Returns:
        Name -> ``(B,)`` array of resampled values (NaN where undefined).
    """
    out = {name: np.full(counts.shape[0], np.nan) for name in metrics}
    if counts.shape[0] == 0:
        return out
    for block, w in weight_blocks(counts, codes):
        for name, fn in metrics.items():
            out[name][block] = fn(y, p, w)
    return out


def resample_ranking(
    y: np.ndarray, p: np.ndarray, codes: np.ndarray, counts: np.ndarray
) -> dict[str, np.ndarray]:
    """AUROC and average precision on every resample, sharing one sort of the scores.

    Same arguments as :func:`resample_metrics`; returns ``{"auroc", "average_precision"}``.
    """
    n_boot = counts.shape[0]
    out = {"auroc": np.full(n_boot, np.nan), "average_precision": np.full(n_boot, np.nan)}
    if y.size == 0 or n_boot == 0:
        return out
    order, starts, is_pos = _score_order(y, p)
    for block, w_sorted in weight_blocks(counts, codes[order]):
        out["auroc"][block], out["average_precision"][block] = _ranking_from(
            *_class_weights(w_sorted, is_pos, starts)
        )
    return out


def resample_confusion(
    y: np.ndarray, p: np.ndarray, threshold: float, codes: np.ndarray, counts: np.ndarray
) -> dict[str, np.ndarray]:
    """Confusion counts and every rate in ``RATE_NAMES`` at ``threshold`` on every resample.

    Counts are additive over patients, so each patient's (tp, fp, tn, fn) is tallied once
    and a resample's totals are ``counts @ tallies``: no per-image work per resample.
    """
    called = p >= threshold
    positive = y == 1.0
    cells = (positive & called, ~positive & called, ~positive & ~called, positive & ~called)
    n_groups = counts.shape[1]
    tallies = np.stack(
        [np.bincount(codes, weights=c.astype(np.float64), minlength=n_groups) for c in cells],
        axis=1,
    )
    totals = counts.astype(np.float64) @ tallies
    tp, fp, tn, fn = totals.T
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, **_rates(tp, fp, tn, fn)}


def percentile_interval(values: np.ndarray, ci: float = 0.95) -> tuple[float, float, int]:
    """``(low, high, n_valid)``: the central ``ci`` percentile interval of the finite values."""
    check_ci(ci)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan, 0
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high), int(finite.size)


def resampled_values(
    y: np.ndarray,
    p: np.ndarray,
    codes: np.ndarray,
    counts: np.ndarray,
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
) -> np.ndarray:
    """``metric_fn`` on every resample of ``counts`` (vectorised when it has a weighted form).

    Same arguments as :func:`resample_metrics`, with one metric; returns ``(B,)`` values.
    """
    weighted = weighted_form(metric_fn)
    if weighted is not None:
        return resample_metrics(y, p, codes, counts, {"m": weighted})["m"]
    values = np.full(counts.shape[0], np.nan)
    rows = np.arange(y.size)
    for b in range(counts.shape[0]):
        take = np.repeat(rows, counts[b][codes])
        values[b] = float(metric_fn(y[take], p[take]))
    return values


def cluster_bootstrap(
    y: Any,
    p: Any,
    groups: Any,
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    *,
    n: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> CI:
    """Metric with a patient-level (cluster) bootstrap percentile interval.

    Rows with an unknown label are dropped first; the patients that remain are resampled
    with replacement (all images of a drawn patient come along, as often as the patient is
    drawn), the metric is recomputed on each resample, and the interval is the central
    ``ci`` range of the resampled values where the metric is defined.

    Args:
        y: Labels (1/0/NaN) for one finding.
        p: Scores.
        groups: Patient key per row; None resamples images independently.
        metric_fn: ``(y, p) -> float``. :func:`auroc`, :func:`average_precision` and any
            :class:`WeightedMetric` (e.g. ``rate_at("sensitivity", t)``) run vectorised.
        n: Number of resamples (0 gives NaN bounds).
        seed: Seed of ``numpy.random.default_rng``.
        ci: Confidence level.
    """
    check_ci(ci)
    y_k, p_k, known = known_pairs(y, p)
    codes, n_groups = codes_of_known(groups, known)
    value = float(metric_fn(y_k, p_k))
    counts = bootstrap_counts(n_groups, n=n, seed=seed)
    low, high, n_valid = percentile_interval(
        resampled_values(y_k, p_k, codes, counts, metric_fn), ci
    )
    return CI(value, low, high, n_valid)
