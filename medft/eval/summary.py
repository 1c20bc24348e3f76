"""``summarize``: everything metrics.json reports, from one shared set of patient resamples."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medft.errors import ConfigError, DataError
from medft.eval.calibration import brier_score, expected_calibration_error
from medft.stats import (
    CI,
    RATE_NAMES,
    auroc,
    average_precision,
    bootstrap_counts,
    known_pairs,
    patient_codes,
    percentile_interval,
    resample_confusion,
    resample_ranking,
    threshold_metrics,
    undefined_reason,
)

__all__ = ["summarize", "threshold_value"]


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
