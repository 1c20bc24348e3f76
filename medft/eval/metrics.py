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

This module is the evaluation's front door to the statistics; the code lives by concern in:

- :mod:`medft.stats` (ground level, shared with the shortcut audit): the input contract,
  the weighted AUROC / AP kernel and threshold rates, the patient-cluster bootstrap, the
  paired comparisons (DeLong, paired bootstrap) and the ROC band;
- :mod:`medft.eval.summary`: :func:`summarize`, the metrics.json structure;
- :mod:`medft.eval.aggregate`: patient / study aggregation of predictions.
"""

from __future__ import annotations

from medft.eval.aggregate import (
    GroupedPredictions,
    aggregate_by_patient,
    aggregate_table_by_patient,
)
from medft.eval.summary import summarize, threshold_value
from medft.stats import (
    CI,
    RATE_NAMES,
    DeLongResult,
    PairedComparison,
    RocBand,
    WeightedFn,
    WeightedMetric,
    auroc,
    auroc_weighted,
    average_precision,
    average_precision_weighted,
    bootstrap_counts,
    cluster_bootstrap,
    delong_test,
    known_pairs,
    paired_bootstrap,
    patient_codes,
    percentile_interval,
    rate_at,
    rate_weighted,
    resample_confusion,
    resample_metrics,
    resample_ranking,
    roc_band,
    threshold_metrics,
    undefined_reason,
)

__all__ = [
    "CI",
    "RATE_NAMES",
    "DeLongResult",
    "GroupedPredictions",
    "PairedComparison",
    "RocBand",
    "WeightedFn",
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
