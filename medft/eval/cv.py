"""Summarise and compare K-fold cross-validation studies: aggregate, fold metrics, compare.

The study's folder layout and reading it back are :mod:`medft.eval.study` (its public
names are re-exported here); running folds, which trains, is :mod:`medft.workflows.cv`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medft import __version__
from medft._io import output_file_in, write_bytes, write_json, write_text
from medft.data.splits import read_assignment
from medft.errors import ConfigError
from medft.eval import plots
from medft.eval.evaluate import table_metrics, write_table
from medft.eval.metrics import auroc, delong_test, paired_bootstrap, roc_band
from medft.eval.report import NOTICE, cv_report
from medft.eval.study import (
    AUDIT_DIR,
    CONFIG_YAML,
    DONE,
    FOLDS_CSV,
    OOF_CSV,
    REPORT_HTML,
    STUDY_JSON,
    SUMMARY_JSON,
    TEST_SKIPPED_CSV,
    FoldId,
    IncompleteStudyError,
    check_coverage,
    collect_predictions,
    collect_skipped,
    finished_folds,
    fold_dir,
    missing_folds,
    now_utc,
    prepare,
    read_study,
    saved_audit_warning,
    study_audit,
)
from medft.eval.subgroups import gap_warnings, subgroup_metrics
from medft.inference import prob_column

__all__ = [
    "AUDIT_DIR",
    "COMPARE_JSON",
    "CONFIG_YAML",
    "DONE",
    "FOLDS_CSV",
    "OOF_CSV",
    "REPORT_HTML",
    "STUDY_JSON",
    "SUMMARY_JSON",
    "TEST_SKIPPED_CSV",
    "FoldId",
    "IncompleteStudyError",
    "aggregate",
    "compare",
    "finished_folds",
    "fold_dir",
    "fold_metrics",
    "format_comparison",
    "format_pooled_auroc",
    "format_summary",
    "missing_folds",
    "prepare",
    "study_audit",
]

COMPARE_JSON = "compare.json"
"""What ``medft cv compare --out DIR`` writes into DIR."""


def fold_metrics(oof: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """Point metrics of every fold from out-of-fold predictions (no intervals).

    Columns: ``repeat``, ``fold``, ``n_images``, ``n_patients``, ``auroc_macro``,
    ``average_precision_macro`` and per finding ``auroc_<f>``, ``average_precision_<f>``,
    ``sensitivity_<f>``, ``specificity_<f>`` (at the fold's own operating point, from the
    ``call_`` columns), ``ece_<f>``, ``brier_<f>``.
    """
    labels = list(labels)
    records = []
    for (repeat, fold), part in oof.groupby(["repeat", "fold"], sort=True):
        metrics = table_metrics(part, labels, None, n_boot=0)
        record: dict[str, Any] = {
            "repeat": int(repeat),
            "fold": int(fold),
            "n_images": int(metrics["n_images"]),
            "n_patients": int(metrics["n_patients"]),
            "auroc_macro": metrics["auroc"]["macro"]["value"],
            "average_precision_macro": metrics["average_precision"]["macro"]["value"],
        }
        for label in labels:
            point = metrics["at_operating_point"][label]
            record[f"auroc_{label}"] = metrics["auroc"]["per_class"][label]["value"]
            record[f"average_precision_{label}"] = metrics["average_precision"]["per_class"][label][
                "value"
            ]
            record[f"sensitivity_{label}"] = point["sensitivity"]["value"]
            record[f"specificity_{label}"] = point["specificity"]["value"]
            record[f"ece_{label}"] = metrics["calibration"][label]["ece"]
            record[f"brier_{label}"] = metrics["calibration"][label]["brier"]
        records.append(record)
    columns = ["repeat", "fold", "n_images", "n_patients", "auroc_macro", "average_precision_macro"]
    return pd.DataFrame(records, columns=columns if not records else None)


def _mean_sd(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    out = {}
    for column in table.columns:
        if column in ("repeat", "fold"):
            continue
        values = table[column].to_numpy(dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[column] = {
            "mean": float(finite.mean()) if finite.size else math.nan,
            "sd": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
            "n": int(finite.size),
        }
    return out


def _pooled_subgroups(
    oof: pd.DataFrame, labels: Sequence[str], by: Sequence[str], n_boot: int, seed: int
) -> dict[str, Any]:
    """Subgroup AUROC from pooled probabilities; sensitivity/specificity from each fold's calls."""
    common = dict(groups_col="patient_key", n_boot=n_boot, seed=seed)
    by_prob = subgroup_metrics(oof, list(by), list(labels), **common)
    by_call = subgroup_metrics(
        oof, list(by), list(labels), thresholds=dict.fromkeys(labels, 0.5),
        prob_column="call_{label}", **common,
    )  # fmt: skip
    result = by_prob.to_dict()
    calls = by_call.to_dict()["by"]
    for attribute, per_label in result["by"].items():
        for label, groups in per_label.items():
            for name, entry in groups.items():
                source = calls[attribute][label][name]
                entry["sensitivity"] = source["sensitivity"]
                entry["specificity"] = source["specificity"]
                entry["threshold"] = None
    return result


def aggregate(out: str | Path, *, n_boot: int | None = None, seed: int | None = None) -> dict:
    """Build ``oof_predictions.csv``, ``summary.json`` and ``report.html`` of a finished study.

    Args:
        out: The study folder written by ``medft cv``.
        n_boot: Patient-bootstrap resamples (default: the study's own setting).
        seed: Bootstrap seed (default: the study's own seed).

    Raises:
        IncompleteStudyError: Some folds are not finished (they are named).
        DataError: The fold folders do not cover every image exactly once per repeat.
    """
    out = Path(out)
    study = read_study(out)
    n_boot = study["n_boot"] if n_boot is None else int(n_boot)
    seed = study["seed"] if seed is None else int(seed)
    labels = list(study["labels"])
    oof = collect_predictions(out, study)
    skipped = collect_skipped(out, study)
    check_coverage(out, oof, skipped)
    per_fold = fold_metrics(oof, labels)
    pooled = {}
    for repeat, part in oof.groupby("repeat", sort=True):
        pooled[f"repeat_{int(repeat)}"] = table_metrics(
            part, labels, None, n_boot=n_boot, seed=seed
        )
    first = oof[oof["repeat"] == 0]
    summary: dict[str, Any] = {
        "notice": NOTICE,
        "medft_version": __version__,
        "created_utc": now_utc(),
        "study": {
            k: study[k]
            for k in ("config", "folds", "repeats", "seed", "labels", "by", "overrides", "manifest")
        },
        "folds": per_fold.to_dict(orient="records"),
        "mean_sd": _mean_sd(per_fold),
        "pooled": pooled,
        "data": {
            "n_images": len(first),
            "n_patients": int(first["patient_key"].nunique()),
            "positives": {label: int((first[label] == 1.0).sum()) for label in labels},
        },
        "skipped_files": {
            "count": int((skipped["repeat"] == 0).sum()) if len(skipped) else 0,
            "per_fold": skipped.groupby(["repeat", "fold"])
            .size()
            .rename("n")
            .reset_index()
            .to_dict(orient="records")
            if len(skipped)
            else [],
            "csv": f"fold folders' {TEST_SKIPPED_CSV}",
        },
        "warnings": [],
        "files": {"oof_predictions": OOF_CSV, "report": REPORT_HTML},
    }
    if study["by"]:
        summary["subgroups"] = _pooled_subgroups(first, labels, study["by"], n_boot, seed)
        summary["warnings"] += gap_warnings(summary["subgroups"])
    warning = saved_audit_warning(out)
    if warning:
        summary["audit"] = {"warning": warning, "report": f"{AUDIT_DIR}/audit.html"}
        summary["warnings"].append(f"Shortcut audit: {warning}")
    if summary["skipped_files"]["count"]:
        summary["warnings"].append(
            f"{summary['skipped_files']['count']} file(s) could not be read and were left out "
            f"(listed in each fold's {TEST_SKIPPED_CSV})."
        )
    for label in labels:
        if pooled["repeat_0"]["auroc"]["per_class"][label].get("note"):
            summary["warnings"].append(
                f"pooled AUROC for {label!r} is undefined: "
                f"{pooled['repeat_0']['auroc']['per_class'][label]['note']}"
            )
    figure = _fold_figure(first, labels, pooled["repeat_0"], n_boot, seed)
    write_table(out / OOF_CSV, oof)
    write_bytes(out / "roc_folds.png", figure)
    write_json(out / SUMMARY_JSON, summary)
    write_text(out / REPORT_HTML, cv_report(summary, {"roc_folds": figure}))
    return summary


def _fold_figure(
    oof: pd.DataFrame, labels: Sequence[str], pooled: Mapping[str, Any], n_boot: int, seed: int
) -> bytes:
    curves: dict[str, list[plots.FoldCurve]] = {label: [] for label in labels}
    bands = {}
    for label in labels:
        for fold, part in oof.groupby("fold", sort=True):
            y = part[label].to_numpy(dtype=np.float64)
            p = part[prob_column(label)].to_numpy(dtype=np.float64)
            band = roc_band(y, p, None, n=0)
            if np.isfinite(band.tpr).all():
                name = f"fold {int(fold)}"
                curves[label].append(plots.FoldCurve(name, band.fpr, band.tpr, auroc(y, p)))
        y = oof[label].to_numpy(dtype=np.float64)
        p = oof[prob_column(label)].to_numpy(dtype=np.float64)
        defined = pooled["auroc"]["per_class"][label].get("note") is None
        bands[label] = (
            roc_band(y, p, oof["patient_key"].to_numpy(), n=n_boot, seed=seed) if defined else None
        )
    return plots.fold_roc_png(curves, bands, pooled["auroc"]["per_class"])


# --------------------------------------------------------------------- compare


def compare(
    dir_a: str | Path,
    dir_b: str | Path,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Compare two finished studies run on the same folds (A minus B).

    Reports per-fold AUROC differences (mean and sd over folds) and, per finding and repeat,
    a paired patient-level bootstrap of the pooled out-of-fold AUROC difference and the
    DeLong test (which treats images as independent; prefer the bootstrap when patients
    have several images).

    Args:
        dir_a: Study folder A.
        dir_b: Study folder B (run on the same folds as A).
        n_boot: Paired patient-bootstrap resamples.
        seed: Bootstrap seed.
        out: Folder to write compare.json into (a path ending in .json names the file
            itself); ``None`` writes nothing.

    Returns:
        The comparison, also written to ``compare.json`` when ``out`` is given.

    Raises:
        ConfigError: The studies were not run on the same folds or share no finding.
    """
    target = None if out is None else output_file_in(out, COMPARE_JSON, suffixes=(".json",))
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    study_a, study_b = read_study(dir_a), read_study(dir_b)
    folds_a = read_assignment(dir_a / FOLDS_CSV)
    folds_b = read_assignment(dir_b / FOLDS_CSV)
    key = [c for c in ("repeat", "path") if c in folds_a.columns]
    if (
        not folds_a.sort_values(key)
        .reset_index(drop=True)
        .equals(folds_b.sort_values(key).reset_index(drop=True))
    ):
        raise ConfigError(
            f"{dir_a} and {dir_b} were not run on the same folds; a paired comparison needs "
            "the same manifest, --folds, --repeats and --seed"
        )
    labels = [label for label in study_a["labels"] if label in study_b["labels"]]
    if not labels:
        raise ConfigError(f"{dir_a} and {dir_b} share no finding to compare")
    oof_a, oof_b = collect_predictions(dir_a, study_a), collect_predictions(dir_b, study_b)
    fold_a, fold_b = fold_metrics(oof_a, labels), fold_metrics(oof_b, labels)
    merged_folds = fold_a.merge(fold_b, on=["repeat", "fold"], suffixes=("_a", "_b"))
    per_fold = []
    for _, row in merged_folds.iterrows():
        record = {"repeat": int(row["repeat"]), "fold": int(row["fold"])}
        for metric in ["auroc_macro", *[f"auroc_{label}" for label in labels]]:
            record[f"{metric}_a"] = float(row[f"{metric}_a"])
            record[f"{metric}_b"] = float(row[f"{metric}_b"])
            record[f"{metric}_diff"] = float(row[f"{metric}_a"] - row[f"{metric}_b"])
        per_fold.append(record)
    diffs = pd.DataFrame(per_fold)
    diff_columns = [c for c in diffs.columns if c.endswith("_diff")]
    pooled: dict[str, Any] = {}
    columns = ["repeat", "path", "patient_key", *labels]
    for repeat, part_a in oof_a.groupby("repeat", sort=True):
        part_b = oof_b[oof_b["repeat"] == repeat]
        both = part_a[columns + [prob_column(x) for x in labels]].merge(
            part_b[["repeat", "path"] + [prob_column(x) for x in labels]],
            on=["repeat", "path"],
            suffixes=("_a", "_b"),
        )
        entry: dict[str, Any] = {
            "n_images": len(both),
            "n_patients": int(both["patient_key"].nunique()),
        }
        for label in labels:
            y = both[label].to_numpy(dtype=np.float64)
            p_a = both[f"{prob_column(label)}_a"].to_numpy(dtype=np.float64)
            p_b = both[f"{prob_column(label)}_b"].to_numpy(dtype=np.float64)
            groups = both["patient_key"].to_numpy()
            entry[label] = {
                "paired_bootstrap": paired_bootstrap(
                    y, p_a, p_b, groups, n=n_boot, seed=seed
                ).to_dict(),
                "delong": delong_test(y, p_a, p_b).to_dict(),
            }
        pooled[f"repeat_{int(repeat)}"] = entry
    result = {
        "a": str(dir_a),
        "b": str(dir_b),
        "labels": labels,
        "per_fold": per_fold,
        "per_fold_mean_sd": _mean_sd(diffs[diff_columns]) if len(diffs) else {},
        "pooled": pooled,
        "bootstrap": {"n": int(n_boot), "seed": int(seed), "unit": "patient"},
    }
    if target is not None:
        write_json(target, result)
    return result


def format_comparison(result: Mapping[str, Any]) -> str:
    """A short text table of :func:`compare`'s result for the terminal."""
    lines = [f"A = {result['a']}\nB = {result['b']}", "per-fold AUROC difference (A - B):"]
    for metric, entry in result["per_fold_mean_sd"].items():
        lines.append(
            f"  {metric.removesuffix('_diff'):<28} {entry['mean']:+.4f} ± {entry['sd']:.4f}"
        )
    for repeat, entry in result["pooled"].items():
        lines.append(f"pooled out-of-fold, {repeat} ({entry['n_images']} images):")
        for label in result["labels"]:
            boot, delong = entry[label]["paired_bootstrap"], entry[label]["delong"]
            lines.append(
                f"  {label:<20} AUROC {boot['value_a']:.4f} vs {boot['value_b']:.4f}  "
                f"diff {boot['difference']:+.4f} (95% CI {boot['ci_low']:+.4f} to "
                f"{boot['ci_high']:+.4f}, bootstrap p={boot['p_value']:.3g}; "
                f"DeLong p={delong['p_value']:.3g})"
            )
    return "\n".join(lines)


def format_summary(summary: Mapping[str, Any]) -> str:
    """A few lines for the terminal: per-fold mean and sd, pooled out-of-fold AUROC."""
    stats = summary["mean_sd"]
    lines = [
        f"{len(summary['folds'])} fold(s); macro AUROC over folds "
        f"{stats['auroc_macro']['mean']:.3f} ± {stats['auroc_macro']['sd']:.3f}"
    ]
    for repeat, pooled in summary["pooled"].items():
        lines.append(f"pooled out-of-fold ({repeat}):")
        for label, entry in pooled["auroc"]["per_class"].items():
            lines.append(f"  {label:<20} AUROC {format_pooled_auroc(entry)}")
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    return "\n".join(lines)


def format_pooled_auroc(entry: Mapping[str, Any]) -> str:
    """``0.812 (95% CI 0.770-0.851)`` from a metric entry; ``n/a`` when undefined."""
    value, low, high = entry.get("value"), entry.get("ci_low"), entry.get("ci_high")
    if value is None or not math.isfinite(value):
        return "n/a"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{value:.3f}"
    return f"{value:.3f} (95% CI {low:.3f}-{high:.3f})"
