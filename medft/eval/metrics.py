"""Discrimination metrics with patient-level (cluster) bootstrap confidence intervals.

Everything here takes labels ``y`` (1.0 positive, 0.0 negative, NaN unknown) and
probabilities ``p`` for one finding, or ``(N, L)`` arrays for several. Rows whose label is
NaN are dropped per finding. A metric that is undefined on the data (one class only) is NaN,
never an exception; :func:`undefined_reason` says why.

Bootstrap resamples are *frequency weights*: resampling G patients with replacement is the
same as giving every image the number of times its patient was drawn. Weighted AUROC, average
precision and threshold rates are computed for a whole block of resamples at once from one
sort of the scores, so 1000 resamples of 5,000 images take a fraction of a second. Any other
``metric_fn(y, p) -> float`` still works; it is called once per resample on the resampled
rows. docs/statistics.md explains the method and the formulas.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from medft.errors import ConfigError, DataError

#: A weighted metric: ``(y (N,), p (N,), w (B, N)) -> (B,)`` values, NaN where undefined.
WeightedFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

#: Resamples are drawn in fixed blocks so the result does not depend on the data size.
_DRAW_BLOCK = 64
#: Upper bound on the elements of one (resamples x images) weight block (16 MiB of float64).
_WEIGHT_BLOCK_ELEMENTS = 2**21

RATE_NAMES = ("sensitivity", "specificity", "ppv", "npv", "accuracy", "f1")


# --- input contract


def known_pairs(y: Any, p: Any, *, name: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate one finding's labels and probabilities; keep the rows with a known label.

    Args:
        y: Labels, 1.0 / 0.0 / NaN (unknown). Booleans and integers are accepted.
        p: Scores (probabilities or logits), finite wherever the label is known.
        name: The finding's name, used in error messages.

    Returns:
        ``(y_known, p_known, known_mask)``; ``y_known`` is float64 0/1.

    Raises:
        DataError: shapes differ, a label is not 0/1/NaN, or a score is not finite.
    """
    what = f" for finding {name!r}" if name else ""
    y_arr = np.asarray(y, dtype=np.float64).reshape(-1)
    p_arr = np.asarray(p, dtype=np.float64).reshape(-1)
    if y_arr.shape != p_arr.shape:
        raise DataError(
            f"labels and predictions differ in length{what}: {y_arr.size} labels, "
            f"{p_arr.size} predictions; pass one prediction per labelled image"
        )
    known = ~np.isnan(y_arr)
    y_known = y_arr[known]
    bad = np.flatnonzero((y_known != 0.0) & (y_known != 1.0))
    if bad.size:
        row = int(np.flatnonzero(known)[bad[0]])
        raise DataError(
            f"label {float(y_known[bad[0]])!r} at row {row}{what} is not 0, 1 or blank; "
            "map uncertain labels before evaluating"
        )
    p_known = p_arr[known]
    not_finite = np.flatnonzero(~np.isfinite(p_known))
    if not_finite.size:
        row = int(np.flatnonzero(known)[not_finite[0]])
        raise DataError(
            f"prediction at row {row}{what} is {float(p_known[not_finite[0]])!r}; "
            "every labelled image needs a finite score"
        )
    return y_known, p_known, known


def undefined_reason(y: Any) -> str | None:
    """Why AUROC/AP cannot be computed for these labels, or None when they can."""
    y_arr = np.asarray(y, dtype=np.float64).reshape(-1)
    y_arr = y_arr[~np.isnan(y_arr)]
    n_pos = int((y_arr == 1).sum())
    n_neg = int(y_arr.size - n_pos)
    if y_arr.size == 0:
        return "no images with a known label"
    if n_pos == 0:
        return f"no positive images among {n_neg} with a known label"
    if n_neg == 0:
        return f"no negative images among {n_pos} with a known label"
    return None


def threshold_value(spec: Any) -> float:
    """The decision threshold held by ``spec``: a number, an OperatingPoint or its dict form."""
    if isinstance(spec, Mapping):
        if "threshold" not in spec:
            raise ConfigError(f"operating point {dict(spec)!r} has no 'threshold' key")
        spec = spec["threshold"]
    value = float(getattr(spec, "threshold", spec))
    if not math.isfinite(value):
        raise ConfigError(f"threshold {value!r} is not a finite number")
    return value


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


def _weighted_form(metric_fn: Callable[..., Any]) -> WeightedFn | None:
    if isinstance(metric_fn, WeightedMetric):
        return metric_fn.weighted
    return _BATCHED.get(metric_fn)


# --- bootstrap engine


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
    codes, keys = _factorize_groups(groups, n_rows)
    return codes, keys.size


def _codes_of_known(groups: Any, known: np.ndarray) -> tuple[np.ndarray, int]:
    """:func:`patient_codes` for the rows with a known label (``known`` is a mask)."""
    if groups is None:
        return patient_codes(None, int(known.sum()))
    keys = np.asarray(groups, dtype=object).reshape(-1)
    if keys.size != known.size:
        raise DataError(f"patient groups have {keys.size} entries for {known.size} rows")
    return patient_codes(keys[known], int(known.sum()))


def _factorize_groups(groups: Any, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
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


def _weight_blocks(counts: np.ndarray, codes: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
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
    for block, w in _weight_blocks(counts, codes):
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
    for block, w_sorted in _weight_blocks(counts, codes[order]):
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


def _check_ci(ci: float) -> None:
    if not 0.0 < ci < 1.0:
        raise ConfigError(f"confidence level must be between 0 and 1, got {ci}")


def percentile_interval(values: np.ndarray, ci: float = 0.95) -> tuple[float, float, int]:
    """``(low, high, n_valid)``: the central ``ci`` percentile interval of the finite values."""
    _check_ci(ci)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan, 0
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high), int(finite.size)


def _resampled_values(
    y: np.ndarray,
    p: np.ndarray,
    codes: np.ndarray,
    counts: np.ndarray,
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
) -> np.ndarray:
    weighted = _weighted_form(metric_fn)
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
    _check_ci(ci)
    y_k, p_k, known = known_pairs(y, p)
    codes, n_groups = _codes_of_known(groups, known)
    value = float(metric_fn(y_k, p_k))
    counts = bootstrap_counts(n_groups, n=n, seed=seed)
    low, high, n_valid = percentile_interval(
        _resampled_values(y_k, p_k, codes, counts, metric_fn), ci
    )
    return CI(value, low, high, n_valid)


# --- the metrics.json summary


def _as_matrix(a: Any, n_labels: int, what: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 1 and n_labels == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != n_labels:
        raise DataError(f"{what} has shape {arr.shape}; expected (n_images, {n_labels})")
    return arr


def _ci_dict(value: float, resampled: np.ndarray, ci: float) -> dict[str, float | int]:
    low, high, n_valid = percentile_interval(resampled, ci)
    return CI(float(value), low, high, n_valid).to_dict()


def _macro(
    point: dict[str, float], resampled: dict[str, np.ndarray], ci: float, n_boot: int
) -> dict[str, Any]:
    """Macro mean over findings whose value is defined, bootstrapped on shared resamples."""
    used = [k for k, v in point.items() if math.isfinite(v)]
    if not used:
        out = CI(math.nan, math.nan, math.nan, 0).to_dict()
        return {**out, "labels": []}
    value = float(np.mean([point[k] for k in used]))
    stacked = np.vstack([resampled[k] for k in used]) if n_boot else np.zeros((len(used), 0))
    # A resample in which any contributing finding is undefined has no macro value.
    per_boot = stacked.mean(axis=0)
    return {**_ci_dict(value, per_boot, ci), "labels": used}


def _finding_summary(
    y: np.ndarray,
    p: np.ndarray,
    codes: np.ndarray,
    counts: np.ndarray,
    threshold: float,
    *,
    ci: float,
    n_bins: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One finding's metrics.json entries and its resampled values (for the macro mean)."""
    # calibration builds on this module's input checks, so it is imported here, not on top.
    from medft.eval.calibration import brier_score, expected_calibration_error

    resampled = {
        **resample_ranking(y, p, codes, counts),
        **resample_confusion(y, p, threshold, codes, counts),
    }
    reason = undefined_reason(y)
    entries: dict[str, Any] = {}
    for metric, metric_fn in (("auroc", auroc), ("average_precision", average_precision)):
        entries[metric] = _ci_dict(metric_fn(y, p), resampled[metric], ci)
        if reason:
            entries[metric]["note"] = reason
    at_point = threshold_metrics(y, p, threshold)
    entries["at_operating_point"] = {
        "threshold": threshold,
        **{r: _ci_dict(at_point[r], resampled[r], ci) for r in RATE_NAMES},
        **{k: at_point[k] for k in ("tp", "fp", "tn", "fn")},
    }
    entries["calibration"] = {
        "ece": expected_calibration_error(y, p, n_bins=n_bins),
        "brier": brier_score(y, p),
        "n_bins": n_bins,
    }
    n_pos = int(y.sum())
    entries["prevalence"] = n_pos / y.size if y.size else math.nan
    entries["counts"] = {
        "n_known": int(y.size),
        "n_positive": n_pos,
        "n_negative": int(y.size - n_pos),
        "n_patients": int(np.unique(codes).size),
    }
    return entries, resampled


def summarize(
    y: Any,
    p: Any,
    labels: Sequence[str],
    groups: Any,
    *,
    thresholds: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    n_bins: int = 15,
) -> dict[str, Any]:
    """Everything metrics.json reports, for ``(N, L)`` labels and probabilities.

    One set of patient resamples (drawn over all patients) is shared by every finding and
    metric, so the macro mean is bootstrapped as a mean, with its correlations intact.

    Args:
        y: ``(N, L)`` labels, 1/0/NaN.
        p: ``(N, L)`` probabilities.
        labels: The L finding names, in column order.
        groups: Patient key per image (None: every image its own patient).
        thresholds: Finding -> threshold (number, OperatingPoint or its dict). Findings not
            given use 0.5, recorded as ``"threshold_source": "default"``.
        n_boot: Bootstrap resamples (0 skips the intervals).
        seed: Bootstrap seed.
        ci: Confidence level.
        n_bins: Bins of the expected calibration error (uniform on [0, 1]).

    Returns:
        ``{"auroc": {"macro": {...}, "per_class": {label: {...}}}, "average_precision": {...},
        "at_operating_point": {label: {...}}, "calibration": {label: {"ece", "brier"}},
        "n_images", "n_patients", "prevalence", "counts", "bootstrap"}``; each interval is
        ``{"value", "ci_low", "ci_high", "n_boot_valid"}``; undefined values are NaN and
        carry a ``"note"``.
    """
    labels = list(labels)
    y_all = _as_matrix(y, len(labels), "labels")
    p_all = _as_matrix(p, len(labels), "predictions")
    if y_all.shape != p_all.shape:
        raise DataError(f"labels {y_all.shape} and predictions {p_all.shape} differ in shape")
    thresholds = dict(thresholds or {})
    unknown = sorted(set(thresholds) - set(labels))
    if unknown:
        raise ConfigError(f"thresholds given for unknown findings {unknown}; findings: {labels}")
    codes_all, n_groups = patient_codes(groups, y_all.shape[0])
    counts = bootstrap_counts(n_groups, n=n_boot, seed=seed)

    point: dict[str, dict[str, float]] = {"auroc": {}, "average_precision": {}}
    boot: dict[str, dict[str, np.ndarray]] = {"auroc": {}, "average_precision": {}}
    result: dict[str, Any] = {
        "auroc": {"per_class": {}},
        "average_precision": {"per_class": {}},
        "at_operating_point": {},
        "calibration": {},
        "n_images": int(y_all.shape[0]),
        "n_patients": int(n_groups),
        "prevalence": {},
        "counts": {},
    }
    for j, label in enumerate(labels):
        y_k, p_k, known = known_pairs(y_all[:, j], p_all[:, j], name=label)
        threshold = threshold_value(thresholds[label]) if label in thresholds else 0.5
        entries, resampled = _finding_summary(
            y_k, p_k, codes_all[known], counts, threshold, ci=ci, n_bins=n_bins
        )
        entries["at_operating_point"]["threshold_source"] = (
            "given" if label in thresholds else "default"
        )
        for key, entry in entries.items():
            target = result[key]["per_class"] if key in point else result[key]
            target[label] = entry
        for metric in point:
            point[metric][label] = entries[metric]["value"]
            boot[metric][label] = resampled[metric]
    for metric in ("auroc", "average_precision"):
        result[metric]["macro"] = _macro(point[metric], boot[metric], ci, n_boot)
    result["bootstrap"] = {
        "n": int(n_boot),
        "seed": int(seed),
        "ci": float(ci),
        "unit": "image" if groups is None else "patient",
        "method": "percentile",
    }
    return result


# --- patient / study level


@dataclass(frozen=True)
class GroupedPredictions:
    """Labels and scores aggregated to one row per patient (or study).

    Attributes:
        y: ``(G,)`` or ``(G, L)`` labels: 1 if any image is positive, NaN if none is known.
        p: Scores aggregated with ``how``.
        keys: The group key of each row (sorted).
        n_images: Images per group.
    """

    y: np.ndarray
    p: np.ndarray
    keys: np.ndarray
    n_images: np.ndarray


def aggregate_by_patient(
    y: Any, p: Any, groups: Any, *, how: Literal["max", "mean"] = "max"
) -> GroupedPredictions:
    """Aggregate image-level predictions to patient (or study) level.

    A group's label is the maximum of its known image labels (positive if any image is
    positive; NaN if no image has a known label); its score is the max or mean of its
    images' scores. Evaluate the result with ``groups=None``: each row is one patient.

    Args:
        y: ``(N,)`` or ``(N, L)`` labels, 1/0/NaN.
        p: Scores of the same shape.
        groups: Patient (or study) key per image.
        how: ``"max"`` (a patient is as suspicious as their worst image) or ``"mean"``.
    """
    if how not in ("max", "mean"):
        raise ConfigError(f"aggregation {how!r} is not supported; use 'max' or 'mean'")
    y_arr = np.asarray(y, dtype=np.float64)
    p_arr = np.asarray(p, dtype=np.float64)
    if y_arr.shape != p_arr.shape:
        raise DataError(f"labels {y_arr.shape} and predictions {p_arr.shape} differ in shape")
    one_d = y_arr.ndim == 1
    y2 = y_arr.reshape(y_arr.shape[0], -1)
    p2 = p_arr.reshape(p_arr.shape[0], -1)
    if groups is None:
        raise ConfigError("aggregate_by_patient needs a patient (or study) key per image")
    codes, keys = _factorize_groups(groups, y2.shape[0])
    y_grouped = pd.DataFrame(y2).groupby(codes).max()
    p_grouped = getattr(pd.DataFrame(p2).groupby(codes), how)()
    n_images = np.bincount(codes)
    y_out = y_grouped.to_numpy(dtype=np.float64)
    p_out = p_grouped.to_numpy(dtype=np.float64)
    if one_d:
        y_out, p_out = y_out[:, 0], p_out[:, 0]
    return GroupedPredictions(y_out, p_out, keys, n_images)


def aggregate_table_by_patient(
    table: pd.DataFrame,
    *,
    group_col: str,
    label_cols: Sequence[str],
    prob_cols: Sequence[str],
    how: Literal["max", "mean"] = "max",
) -> pd.DataFrame:
    """:func:`aggregate_by_patient` for a predictions table; one row per ``group_col`` value.

    Returns a DataFrame with ``group_col``, the label and probability columns, and
    ``n_images``.
    """
    missing = [c for c in (group_col, *label_cols, *prob_cols) if c not in table.columns]
    if missing:
        raise DataError(f"predictions table lacks columns {missing}; it has {list(table.columns)}")
    if len(label_cols) != len(prob_cols):
        raise ConfigError("label_cols and prob_cols must pair up one to one")
    grouped = aggregate_by_patient(
        table[list(label_cols)].to_numpy(dtype=np.float64),
        table[list(prob_cols)].to_numpy(dtype=np.float64),
        table[group_col].to_numpy(),
        how=how,
    )
    out = pd.DataFrame({group_col: grouped.keys})
    for j, col in enumerate(label_cols):
        out[col] = grouped.y[:, j]
    for j, col in enumerate(prob_cols):
        out[col] = grouped.p[:, j]
    out["n_images"] = grouped.n_images
    return out


# --- paired comparisons


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
    _check_ci(ci)
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
    _check_ci(ci)
    y_k, a_k, known = known_pairs(y, p_a, name="model a")
    b_k = known_pairs(y, p_b, name="model b")[1]
    codes, n_groups = _codes_of_known(groups, known)
    counts = bootstrap_counts(n_groups, n=n, seed=seed)
    value_a, value_b = float(metric_fn(y_k, a_k)), float(metric_fn(y_k, b_k))
    diffs = _resampled_values(y_k, a_k, codes, counts, metric_fn) - _resampled_values(
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


# --- ROC band for plots


@dataclass(frozen=True)
class RocBand:
    """ROC curve on a fixed false-positive-rate grid with a pointwise bootstrap band."""

    fpr: np.ndarray
    tpr: np.ndarray
    tpr_low: np.ndarray
    tpr_high: np.ndarray
    n_boot_valid: int

    def to_dict(self) -> dict[str, Any]:
        """Lists of floats for JSON."""
        return {
            "fpr": self.fpr.tolist(),
            "tpr": self.tpr.tolist(),
            "tpr_low": self.tpr_low.tolist(),
            "tpr_high": self.tpr_high.tolist(),
            "n_boot_valid": self.n_boot_valid,
        }


def _interp_roc(grid: np.ndarray, fpr: np.ndarray, tpr: np.ndarray) -> np.ndarray:
    """Piecewise-linear ROC at ``grid``; at an FPR where the curve rises, its top."""
    last = np.searchsorted(fpr, grid, side="right") - 1
    on_point = fpr[last] == grid
    nxt = np.minimum(last + 1, fpr.size - 1)
    span = fpr[nxt] - fpr[last]
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(span > 0, (tpr[nxt] - tpr[last]) / np.where(span > 0, span, 1.0), 0.0)
    return np.where(on_point, tpr[last], tpr[last] + (grid - fpr[last]) * slope)


def _roc_on_grid(y: np.ndarray, p: np.ndarray, w: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """TPR interpolated at ``grid`` FPRs for each weight row (NaN rows: one class).

    Where the curve rises vertically (several TPRs at one FPR) the highest TPR is used.
    """
    order, starts, is_pos = _score_order(y, p)
    pos, neg = _class_weights(w[:, order], is_pos, starts)
    tp = np.cumsum(pos[:, ::-1], axis=1)
    fp = np.cumsum(neg[:, ::-1], axis=1)
    out = np.full((w.shape[0], grid.size), np.nan)
    for b in range(w.shape[0]):
        if tp[b, -1] > 0 and fp[b, -1] > 0:
            fpr = np.concatenate(([0.0], fp[b] / fp[b, -1]))
            tpr = np.concatenate(([0.0], tp[b] / tp[b, -1]))
            out[b] = _interp_roc(grid, fpr, tpr)
    return out


def roc_band(
    y: Any,
    p: Any,
    groups: Any,
    *,
    n: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    n_points: int = 101,
) -> RocBand:
    """ROC curve with a pointwise patient-level bootstrap band (for the report's ROC plot).

    TPR is linearly interpolated at ``n_points`` evenly spaced FPRs (the trapezoidal ROC,
    whose area is :func:`auroc`); the band is the percentile interval of each grid point.
    """
    _check_ci(ci)
    y_k, p_k, known = known_pairs(y, p)
    codes, n_groups = _codes_of_known(groups, known)
    grid = np.linspace(0.0, 1.0, n_points)
    tpr = _roc_on_grid(y_k, p_k, np.ones((1, y_k.size)), grid)[0]
    counts = bootstrap_counts(n_groups, n=n, seed=seed)
    curves = np.full((n, n_points), np.nan)
    for block, w in _weight_blocks(counts, codes):
        curves[block] = _roc_on_grid(y_k, p_k, w, grid)
    valid = curves[np.isfinite(curves).all(axis=1)]
    if valid.shape[0] == 0:
        nan = np.full(n_points, np.nan)
        return RocBand(grid, tpr, nan, nan.copy(), 0)
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(valid, [alpha, 1.0 - alpha], axis=0)
    return RocBand(grid, tpr, low, high, int(valid.shape[0]))


__all__ = [
    "CI",
    "RATE_NAMES",
    "DeLongResult",
    "GroupedPredictions",
    "PairedComparison",
    "RocBand",
    "WeightedMetric",
    "aggregate_by_patient",
    "aggregate_table_by_patient",
    "auroc",
    "auroc_weighted",
    "average_precision",
    "average_precision_weighted",
    "bootstrap_counts",
    "cluster_bootstrap",
    "delong_test",
    "known_pairs",
    "paired_bootstrap",
    "patient_codes",
    "percentile_interval",
    "rate_at",
    "rate_weighted",
    "resample_confusion",
    "resample_metrics",
    "resample_ranking",
    "roc_band",
    "summarize",
    "threshold_metrics",
    "threshold_value",
    "undefined_reason",
]
