"""medft's one statistics engine: the weighted AUROC / AP kernel and the patient bootstrap.

A ground-level package (it imports numpy, pandas, scipy and :mod:`medft.errors` only), so
that every layer that reports a number with an interval uses the same code: the evaluation
(``medft evaluate``, ``medft cv``, ``medft cv compare``, subgroups; through
:mod:`medft.eval.metrics`) and the shortcut audit (:mod:`medft.data.audit`). torchmetrics
is used only for the in-training logs.

- :mod:`medft.stats.inputs`: the input contract (labels 1/0/NaN, finite scores).
- :mod:`medft.stats.ranking`: weighted AUROC, average precision and threshold rates; the
  point metrics are the same kernels with unit weights.
- :mod:`medft.stats.bootstrap`: patient codes, the resample counts, and the cluster
  bootstrap that scores every resample at once.
- :mod:`medft.stats.paired`: DeLong and the paired bootstrap of two models.
- :mod:`medft.stats.roc`: the ROC curve with a pointwise bootstrap band.
"""

from __future__ import annotations

from medft.stats.bootstrap import (
    CI,
    bootstrap_counts,
    cluster_bootstrap,
    codes_of_known,
    factorize_groups,
    patient_codes,
    percentile_interval,
    resample_confusion,
    resample_metrics,
    resample_ranking,
    resampled_values,
    weight_blocks,
)
from medft.stats.inputs import check_ci, known_pairs, undefined_reason
from medft.stats.paired import DeLongResult, PairedComparison, delong_test, paired_bootstrap
from medft.stats.ranking import (
    RATE_NAMES,
    WeightedFn,
    WeightedMetric,
    auroc,
    auroc_weighted,
    average_precision,
    average_precision_weighted,
    rate_at,
    rate_weighted,
    threshold_metrics,
    weighted_form,
)
from medft.stats.roc import RocBand, roc_band

__all__ = [
    "CI",
    "RATE_NAMES",
    "DeLongResult",
    "PairedComparison",
    "RocBand",
    "WeightedFn",
    "WeightedMetric",
    "auroc",
    "auroc_weighted",
    "average_precision",
    "average_precision_weighted",
    "bootstrap_counts",
    "check_ci",
    "cluster_bootstrap",
    "codes_of_known",
    "delong_test",
    "factorize_groups",
    "known_pairs",
    "paired_bootstrap",
    "patient_codes",
    "percentile_interval",
    "rate_at",
    "rate_weighted",
    "resample_confusion",
    "resample_metrics",
    "resample_ranking",
    "resampled_values",
    "roc_band",
    "threshold_metrics",
    "undefined_reason",
    "weight_blocks",
    "weighted_form",
]
