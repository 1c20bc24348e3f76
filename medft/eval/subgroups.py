"""Subgroup metrics: does the model work equally well for every view, scanner, sex, age band?

For each grouping column (``by``), each of its values and each finding: counts, prevalence,
AUROC and sensitivity/specificity at the finding's operating point, each with a patient-level
bootstrap interval. One set of patient resamples is drawn over the whole table and shared by
all subgroups, so a patient with images in two subgroups (a PA and an AP view) moves as one
unit, and the gap between two subgroups gets its own interval from the same resamples.

A subgroup is *eligible* for gap flagging when it has at least ``min_count`` images with a
known label and both classes; smaller subgroups are reported, never flagged. For each
(column, finding) the gap is best minus worst eligible AUROC; the largest gap over the whole
report is flagged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medft.errors import ConfigError, DataError
from medft.eval.metrics import (
    auroc,
    bootstrap_counts,
    known_pairs,
    patient_codes,
    percentile_interval,
    resample_confusion,
    resample_ranking,
    threshold_metrics,
    threshold_value,
    undefined_reason,
)

#: Subgroup name used for rows whose grouping value is missing.
MISSING = "missing"
_METRICS = ("auroc", "sensitivity", "specificity")


@dataclass(frozen=True)
class SubgroupReport:
    """Subgroup metrics as tables.

    Attributes:
        table: One row per (attribute, subgroup, label): ``n_images`` (known label),
            ``n_patients``, ``n_positive``, ``prevalence``, ``threshold``, ``auroc``,
            ``auroc_ci_low``, ``auroc_ci_high``, the same for ``sensitivity`` and
            ``specificity``, ``eligible`` and ``note``.
        gaps: One row per (attribute, label) with at least two eligible subgroups:
            ``best_subgroup``, ``best_auroc``, ``worst_subgroup``, ``worst_auroc``,
            ``auroc_gap`` with ``gap_ci_low``/``gap_ci_high``, and ``largest`` (True on the
            single largest gap of the report). Sorted by gap, largest first.
    """

    table: pd.DataFrame
    gaps: pd.DataFrame

    def to_dict(self) -> dict[str, Any]:
        """``{"by": {attribute: {label: {subgroup: {...}}}}, "gaps": [...], "largest_gap"}``."""
        nested: dict[str, Any] = {}
        for row in self.table.to_dict(orient="records"):
            entry = {
                "n_images": int(row["n_images"]),
                "n_patients": int(row["n_patients"]),
                "n_positive": int(row["n_positive"]),
                "prevalence": float(row["prevalence"]),
                "threshold": float(row["threshold"]),
                "eligible": bool(row["eligible"]),
            }
            for m in _METRICS:
                entry[m] = {
                    "value": float(row[m]),
                    "ci_low": float(row[f"{m}_ci_low"]),
                    "ci_high": float(row[f"{m}_ci_high"]),
                }
            if row["note"]:
                entry["note"] = row["note"]
            by_label = nested.setdefault(row["attribute"], {}).setdefault(row["label"], {})
            by_label[row["subgroup"]] = entry
        gaps = [_plain(g) for g in self.gaps.to_dict(orient="records")]
        largest = next((g for g in gaps if g["largest"]), None)
        return {"by": nested, "gaps": gaps, "largest_gap": largest}


def _plain(record: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in record.items():
        if isinstance(v, (bool, np.bool_)):
            out[k] = bool(v)
        elif isinstance(v, (int, np.integer)):
            out[k] = int(v)
        elif isinstance(v, (float, np.floating)):
            out[k] = float(v)
        else:
            out[k] = v
    return out


def _subgroup_values(column: pd.Series) -> np.ndarray:
    """Grouping values as strings; missing values become ``"missing"``."""
    as_str = column.astype(object).where(column.notna(), MISSING).astype(str)
    return as_str.to_numpy()


def subgroup_metrics(
    table: pd.DataFrame,
    by: Sequence[str],
    labels: Sequence[str],
    *,
    thresholds: Mapping[str, Any] | None = None,
    groups_col: str = "patient_id",
    prob_column: str = "prob_{label}",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    min_count: int = 10,
) -> SubgroupReport:
    """Per-subgroup AUROC and sensitivity/specificity with patient-level bootstrap CIs.

    Args:
        table: One row per image: the label columns (1/0/NaN), probability columns, the
            patient column and every ``by`` column (manifest columns or DICOM metadata such
            as ``view_position``, ``manufacturer``, ``patient_sex``, ``age_band``).
        by: Columns to split by, each on its own (no crossing).
        labels: Findings to report.
        thresholds: Finding -> threshold (number, OperatingPoint or its dict); 0.5 if absent.
        groups_col: Patient key column for the cluster bootstrap.
        prob_column: Format of the probability column name, ``{label}`` substituted.
        n_boot: Bootstrap resamples (0: no intervals).
        seed: Bootstrap seed.
        ci: Confidence level.
        min_count: Fewest images with a known label for a subgroup to be flagged.
    """
    by, labels = list(by), list(labels)
    if not by:
        raise ConfigError("subgroup_metrics needs at least one column to split by")
    prob_cols = {label: prob_column.format(label=label) for label in labels}
    needed = [groups_col, *by, *labels, *prob_cols.values()]
    missing = [c for c in dict.fromkeys(needed) if c not in table.columns]
    if missing:
        raise DataError(
            f"table lacks columns {missing} needed for subgroup metrics; "
            f"it has {list(table.columns)}"
        )
    thresholds = dict(thresholds or {})
    codes_all, n_groups = patient_codes(table[groups_col].to_numpy(), len(table))
    counts = bootstrap_counts(n_groups, n=n_boot, seed=seed)

    rows: list[dict[str, Any]] = []
    resampled_auroc: dict[tuple[str, str, str], np.ndarray] = {}
    for label in labels:
        threshold = threshold_value(thresholds[label]) if label in thresholds else 0.5
        y_all = table[label].to_numpy(dtype=np.float64)
        p_all = table[prob_cols[label]].to_numpy(dtype=np.float64)
        for attribute in by:
            values = _subgroup_values(table[attribute])
            for subgroup in sorted(set(values)):
                in_group = values == subgroup
                y_k, p_k, known = known_pairs(y_all[in_group], p_all[in_group], name=label)
                stats, boot_auroc = _subgroup_stats(
                    y_k, p_k, codes_all[in_group][known], counts, threshold, ci, min_count
                )
                resampled_auroc[(attribute, subgroup, label)] = boot_auroc
                row = {"attribute": attribute, "subgroup": subgroup, "label": label, **stats}
                rows.append(row)
    result = pd.DataFrame(rows)
    return SubgroupReport(result, _gaps(result, resampled_auroc, ci))


def _subgroup_stats(
    y: np.ndarray,
    p: np.ndarray,
    codes: np.ndarray,
    counts: np.ndarray,
    threshold: float,
    ci: float,
    min_count: int,
) -> tuple[dict[str, Any], np.ndarray]:
    """One subgroup's counts, metrics and intervals, and its resampled AUROCs (for gaps)."""
    point = {"auroc": auroc(y, p), **threshold_metrics(y, p, threshold)}
    boot = {
        **resample_ranking(y, p, codes, counts),
        **resample_confusion(y, p, threshold, codes, counts),
    }
    n_pos = int(y.sum())
    reason = undefined_reason(y)
    stats: dict[str, Any] = {
        "n_images": int(y.size),
        "n_patients": int(np.unique(codes).size),
        "n_positive": n_pos,
        "prevalence": n_pos / y.size if y.size else math.nan,
        "threshold": threshold,
    }
    for m in _METRICS:
        low, high, _ = percentile_interval(boot[m], ci)
        stats.update({m: point[m], f"{m}_ci_low": low, f"{m}_ci_high": high})
    stats["eligible"] = bool(y.size >= min_count and reason is None)
    small = "" if stats["eligible"] else f"fewer than {min_count} images with a known label"
    stats["note"] = reason or small
    return stats, boot["auroc"]


def _gaps(
    table: pd.DataFrame, resampled: Mapping[tuple[str, str, str], np.ndarray], ci: float
) -> pd.DataFrame:
    """Best-minus-worst eligible AUROC per (attribute, label), with a paired interval."""
    columns = [
        "attribute",
        "label",
        "best_subgroup",
        "best_auroc",
        "worst_subgroup",
        "worst_auroc",
        "auroc_gap",
        "gap_ci_low",
        "gap_ci_high",
        "largest",
    ]
    records = []
    eligible = table[table["eligible"]] if len(table) else table
    for (attribute, label), part in eligible.groupby(["attribute", "label"], sort=False):
        if len(part) < 2:
            continue
        best = part.loc[part["auroc"].idxmax()]
        worst = part.loc[part["auroc"].idxmin()]
        diff = (
            resampled[(attribute, best["subgroup"], label)]
            - resampled[(attribute, worst["subgroup"], label)]
        )
        low, high, _ = percentile_interval(diff, ci)
        records.append(
            {
                "attribute": attribute,
                "label": label,
                "best_subgroup": best["subgroup"],
                "best_auroc": float(best["auroc"]),
                "worst_subgroup": worst["subgroup"],
                "worst_auroc": float(worst["auroc"]),
                "auroc_gap": float(best["auroc"] - worst["auroc"]),
                "gap_ci_low": low,
                "gap_ci_high": high,
                "largest": False,
            }
        )
    gaps = pd.DataFrame(records, columns=columns)
    if len(gaps):
        gaps = gaps.sort_values("auroc_gap", ascending=False, kind="mergesort")
        gaps = gaps.reset_index(drop=True)
        gaps.loc[0, "largest"] = True
        gaps["largest"] = gaps["largest"].astype(bool)
    return gaps


def gap_warnings(subgroups: Mapping[str, Any] | None) -> list[str]:
    """One sentence per subgroup AUROC gap whose interval excludes 0 (largest first).

    ``subgroups`` is :meth:`SubgroupReport.to_dict` output (or ``None``); ``evaluate`` and
    ``cv`` both put these sentences among their warnings, so a report never shows a real
    gap only in a table.
    """
    out = []
    for gap in (subgroups or {}).get("gaps", []):
        low = gap.get("gap_ci_low")
        if low is None or not math.isfinite(low) or low <= 0:
            continue
        out.append(
            f"Subgroup gap: AUROC for {gap['label']!r} differs by {gap['auroc_gap']:.3f} "
            f"between {gap['attribute']}={gap['best_subgroup']!r} and "
            f"{gap['worst_subgroup']!r} (interval {low:.3f} to {gap['gap_ci_high']:.3f}, "
            "excludes 0)."
        )
    return out


__all__ = ["MISSING", "SubgroupReport", "gap_warnings", "subgroup_metrics"]
