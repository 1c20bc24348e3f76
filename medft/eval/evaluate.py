"""``medft evaluate``: a checkpoint and a manifest in, honest numbers out.

Writes to the output folder, each file atomically:

- ``predictions.csv``: one row per readable image (path, salted patient key, true labels,
  ``prob_<label>``, ``call_<label>`` at the stored operating point, subgroup columns);
- ``skipped_files.csv``: unreadable files with the reason (always written, maybe empty);
- ``metrics.json``: :func:`medft.eval.metrics.summarize` (AUROC and AP with patient-level
  bootstrap CIs, sensitivity/specificity/PPV/NPV at the operating point, ECE and Brier) plus
  calibration before/after the stored temperature, the data summary, skipped-file count,
  subgroup metrics and warnings;
- ``roc.png``, ``pr.png``, ``reliability.png``, ``confusion.png`` and ``report.html``.

The statistics live in :mod:`medft.eval.metrics`, :mod:`~medft.eval.calibration` and
:mod:`~medft.eval.subgroups`; this module only wires them to a checkpoint.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from medft import __version__
from medft._io import atomic_path, check_output_dir, write_bytes, write_json, write_text
from medft.data.cache import BadFilePolicy
from medft.data.manifest import UncertainPolicy, load_manifest
from medft.errors import ConfigError
from medft.eval import plots
from medft.eval.calibration import apply_temperature, brier_score, expected_calibration_error
from medft.eval.metrics import aggregate_table_by_patient, roc_band, summarize
from medft.eval.predict import predict_manifest
from medft.eval.report import NOTICE, evaluation_report
from medft.eval.subgroups import gap_warnings, subgroup_metrics
from medft.inference import (
    Predictions,
    Predictor,
    call_column,
    prob_column,
    skipped_table,
)

__all__ = [
    "LEVELS",
    "PREDICTIONS_CSV",
    "SKIPPED_CSV",
    "analysis_arrays",
    "evaluate",
    "table_metrics",
    "write_table",
]

Level = Literal["image", "patient", "study"]
"""Unit of analysis of an evaluation."""
LEVELS: tuple[str, ...] = get_args(Level)
How = Literal["max", "mean"]
"""How image probabilities combine into a patient's (or study's)."""
PREDICTIONS_CSV = "predictions.csv"
SKIPPED_CSV = "skipped_files.csv"
METRICS_JSON = "metrics.json"
REPORT_HTML = "report.html"
#: Fewer valid resamples than this share of n_boot gets a warning (too few positive patients).
_VALID_SHARE_WARNING = 0.9


def write_table(path: str | Path, table: pd.DataFrame) -> Path:
    """Write a CSV atomically (no index)."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return Path(path)


def analysis_arrays(
    table: pd.DataFrame,
    labels: Sequence[str],
    *,
    level: str = "image",
    how: str = "max",
    score: str = "prob",
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Labels, scores and bootstrap clusters at the unit of analysis.

    Args:
        table: A predictions table (``patient_key``, labels, ``prob_``/``call_`` columns).
        labels: Findings.
        level: ``image`` (clusters = patients), ``patient`` (one row per patient, no
            clustering needed) or ``study`` (one row per ``study_key``, clusters = patients).
        how: ``max`` or ``mean`` over a patient's/study's images.
        score: ``prob`` or ``call`` columns.

    Returns:
        ``(y (N, L), scores (N, L), groups or None)``.
    """
    if level not in LEVELS:
        raise ConfigError(f"aggregate={level!r} is not one of {', '.join(LEVELS)}")
    column = prob_column if score == "prob" else call_column
    score_cols = [column(label) for label in labels]
    if level == "image":
        y = table[list(labels)].to_numpy(dtype=np.float64)
        p = table[score_cols].to_numpy(dtype=np.float64)
        return y, p, table["patient_key"].to_numpy()
    group_col = "patient_key" if level == "patient" else "study_key"
    if group_col not in table.columns:
        raise ConfigError(
            "aggregate=study needs a 'study_id' column in the manifest (one accession per "
            "study); use aggregate=patient otherwise"
        )
    grouped = aggregate_table_by_patient(
        table, group_col=group_col, label_cols=list(labels), prob_cols=score_cols, how=how
    )
    y = grouped[list(labels)].to_numpy(dtype=np.float64)
    p = grouped[score_cols].to_numpy(dtype=np.float64)
    if level == "patient":
        return y, p, None
    owner = table.drop_duplicates(group_col).set_index(group_col)["patient_key"]
    return y, p, grouped[group_col].map(owner).to_numpy()


def table_metrics(
    table: pd.DataFrame,
    labels: Sequence[str],
    thresholds: Mapping[str, float] | None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    level: str = "image",
    how: str = "max",
) -> dict[str, Any]:
    """:func:`medft.eval.metrics.summarize` of a predictions table at the unit of analysis.

    With ``thresholds=None`` the operating-point rates come from the table's ``call_``
    columns (each row called at its own model's threshold, as in pooled out-of-fold
    predictions of a cross-validation study); the threshold is then reported as None.
    """
    labels = list(labels)
    y, p, groups = analysis_arrays(table, labels, level=level, how=how)
    if thresholds is not None:
        result = summarize(
            y, p, labels, groups, thresholds=dict(thresholds), n_boot=n_boot, seed=seed, ci=ci
        )
    else:
        result = summarize(y, p, labels, groups, n_boot=n_boot, seed=seed, ci=ci)
        _, calls, _ = analysis_arrays(table, labels, level=level, how=how, score="call")
        from_calls = summarize(
            y, calls, labels, groups, thresholds=dict.fromkeys(labels, 0.5), n_boot=n_boot,
            seed=seed, ci=ci,
        )  # fmt: skip
        for label in labels:
            entry = from_calls["at_operating_point"][label]
            entry["threshold"] = None
            entry["threshold_source"] = "each model's own operating point"
            result["at_operating_point"][label] = entry
    result["level"] = level
    result["aggregation"] = None if level == "image" else {"level": level, "how": how}
    return result


def _temperature_scaling(
    predictions: Predictions, temperature: float | None, applied: bool
) -> dict[str, Any] | None:
    """ECE and Brier score per finding before and after the stored temperature."""
    if temperature is None or not len(predictions.table):
        return None
    labels = predictions.labels
    y = predictions.table[labels].to_numpy(dtype=np.float64)
    before = apply_temperature(predictions.logits, 1.0)
    after = apply_temperature(predictions.logits, float(temperature))
    per_class = {}
    for j, label in enumerate(labels):
        per_class[label] = {
            "ece_before": expected_calibration_error(y[:, j], before[:, j]),
            "ece_after": expected_calibration_error(y[:, j], after[:, j]),
            "brier_before": brier_score(y[:, j], before[:, j]),
            "brier_after": brier_score(y[:, j], after[:, j]),
        }
    return {"temperature": float(temperature), "applied": applied, "per_class": per_class}


def _audit_warnings(meta: Mapping[str, Any]) -> list[str]:
    """Shortcut-audit warnings a checkpoint carries (``meta["audit"]["warnings"]``)."""
    audit = meta.get("audit")
    if isinstance(audit, Mapping):
        found = audit.get("warnings") or audit.get("warning") or []
        return [str(w) for w in ([found] if isinstance(found, str) else found)]
    return []


def _warnings(metrics: Mapping[str, Any], n_boot: int, meta: Mapping[str, Any]) -> list[str]:
    out = _audit_warnings(meta)
    seen = metrics.get("seen_patients") or {}
    if seen.get("warning"):
        out.insert(0, seen["warning"] + ".")
    skipped = metrics["skipped_files"]["count"]
    if skipped:
        out.append(
            f"{skipped} file(s) could not be read and were left out; see "
            f"{metrics['skipped_files']['csv']}."
        )
    for label, entry in metrics["auroc"]["per_class"].items():
        if "note" in entry:
            out.append(f"AUROC for {label!r} is undefined: {entry['note']}.")
        elif n_boot and entry.get("n_boot_valid", n_boot) < _VALID_SHARE_WARNING * n_boot:
            out.append(
                f"Only {entry['n_boot_valid']} of {n_boot} bootstrap resamples had both "
                f"classes for {label!r}: too few positive patients for a reliable interval."
            )
    out += gap_warnings(metrics.get("subgroups"))
    return out


def _data_summary(
    n_manifest: int, predictions: Predictions, meta: Mapping[str, Any]
) -> dict[str, Any]:
    table = predictions.table
    return {
        "n_images_manifest": int(n_manifest),
        "n_images_evaluated": len(table),
        "n_patients": int(table["patient_key"].nunique()),
        "positives": {label: int((table[label] == 1.0).sum()) for label in predictions.labels},
        "training_split": meta.get("data_summary"),
    }


def _figures(
    table: pd.DataFrame,
    predictions: Predictions,
    metrics: Mapping[str, Any],
    *,
    level: str,
    how: str,
    n_boot: int,
    seed: int,
    ci: float,
) -> dict[str, bytes]:
    labels = predictions.labels
    y, p, groups = analysis_arrays(table, labels, level=level, how=how)
    bands = {}
    for j, label in enumerate(labels):
        if metrics["auroc"]["per_class"][label].get("value") is None or not math.isfinite(
            metrics["auroc"]["per_class"][label]["value"]
        ):
            bands[label] = None
            continue
        bands[label] = roc_band(y[:, j], p[:, j], groups, n=n_boot, seed=seed, ci=ci)
    figures = {
        "roc": plots.roc_png(bands, metrics["auroc"]["per_class"], ci=ci),
        "pr": plots.pr_png(y, p, labels, metrics["average_precision"]["per_class"]),
        "confusion": plots.confusion_png(y, p, labels, predictions.thresholds),
    }
    if predictions.task != "multiclass":
        image_y = table[labels].to_numpy(dtype=np.float64)
        raw = apply_temperature(predictions.logits, 1.0)
        scaling = metrics.get("temperature_scaling")
        after = None
        if scaling:
            after = apply_temperature(predictions.logits, scaling["temperature"])
        figures["reliability"] = plots.reliability_png(
            image_y,
            raw,
            labels,
            p_after=after,
            temperature=scaling["temperature"] if scaling else None,
        )
    else:
        figures["reliability"] = plots.reliability_png(
            table[labels].to_numpy(dtype=np.float64),
            table[[prob_column(label) for label in labels]].to_numpy(dtype=np.float64),
            labels,
        )
    return figures


def evaluate(
    checkpoint: str | Path,
    manifest: str | Path,
    out: str | Path,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    by: Sequence[str] = (),
    aggregate: Level = "image",
    how: How = "max",
    calibrate: bool = False,
    include_patient_id: bool = False,
    batch_size: int = 32,
    num_workers: int = 0,
    on_bad_file: BadFilePolicy = "skip",
    uncertain: UncertainPolicy = "ignore",
    min_subgroup: int = 10,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a manifest; write predictions, metrics, plots and a report.

    Args:
        checkpoint: A medft checkpoint (loaded with ``weights_only=True``).
        manifest: Manifest CSV or ``CLASS/**`` folder labelled with the checkpoint's findings.
        out: Output folder (created).
        n_boot: Patient-level bootstrap resamples for every interval.
        seed: Bootstrap seed.
        ci: Confidence level.
        by: Subgroup columns (manifest columns or DICOM metadata such as
            ``view_position``, ``manufacturer``, ``patient_sex``, ``age_band``).
        aggregate: Unit of analysis: ``image``, ``patient`` or ``study`` (needs
            ``study_id`` in the manifest).
        how: ``max`` or ``mean`` of a patient's (study's) image probabilities.
        calibrate: Report probabilities scaled by the checkpoint's stored temperature.
        include_patient_id: Write raw patient IDs into predictions.csv (off: salted keys).
        batch_size: Images per forward pass.
        num_workers: DataLoader processes decoding images.
        on_bad_file: ``skip`` (default; listed in skipped_files.csv) or ``fail``.
        uncertain: What an uncertain (-1) label becomes: ``ignore``, ``positive``, ``negative``.
        min_subgroup: Fewest images with a known label for a subgroup gap to be flagged.

    Returns:
        The dictionary written to ``metrics.json``.
    """
    check_output_dir(out)  # a bad --out is found now, not after the inference
    if aggregate not in LEVELS:
        raise ConfigError(f"aggregate={aggregate!r} is not one of {', '.join(LEVELS)}")
    if how not in ("max", "mean"):
        raise ConfigError(f"how={how!r} is not 'max' or 'mean'")
    out = Path(out)
    predictor = Predictor.from_checkpoint(checkpoint)
    classifier = predictor.single()
    is_folder = Path(manifest).is_dir()
    loaded = load_manifest(
        manifest,
        labels=None if is_folder else predictor.labels,
        uncertain=uncertain,  # type: ignore[arg-type]
        check_files=False,
    )
    predictions = predict_manifest(
        predictor,
        loaded,
        batch_size=batch_size,
        num_workers=num_workers,
        on_bad_file=on_bad_file,
        calibrate=calibrate,
        extra_columns=by,
        include_patient_id=include_patient_id,
    )
    table = predictions.table
    if table.empty:
        raise ConfigError(
            f"{manifest}: none of its {len(loaded.table)} image(s) could be read; see the "
            "reasons with `medft data check`"
        )
    write_table(out / PREDICTIONS_CSV, table)
    write_table(out / SKIPPED_CSV, skipped_table(predictions.skipped))

    labels = predictions.labels
    metrics: dict[str, Any] = {
        "notice": NOTICE,
        "medft_version": __version__,
        "created_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "checkpoint": {
            "file": Path(checkpoint).name,
            "backbone": classifier.meta.get("backbone", classifier.model.hparams.get("backbone")),
            "task": classifier.task,
            "labels": labels,
            "image_size": classifier.image_size,
            "fit_mode": predictor.fit_mode,
            "cache_dtype": predictor.cache_dtype,
            "operating_point_method": classifier.meta.get("operating_point_method"),
            "threshold_source": predictor.threshold_source,
            "software": classifier.meta.get("software"),
        },
        "manifest": {"file": Path(manifest).name},
    }
    metrics.update(
        table_metrics(
            table, labels, predictions.thresholds, n_boot=n_boot, seed=seed, ci=ci,
            level=aggregate, how=how,
        )
    )  # fmt: skip
    stored_points = classifier.meta.get("operating_points") or {}
    for label, entry in metrics.get("at_operating_point", {}).items():
        if label not in stored_points and entry.get("threshold_source") == "given":
            entry["threshold_source"] = "default"  # 0.5: the checkpoint stores no threshold
    metrics["operating_points"] = {
        label: {
            **dict(stored_points.get(label, {})),
            "applied_threshold": predictions.thresholds[label],
        }
        for label in labels
    }
    stored_t = classifier.temperature if classifier.task != "multiclass" else None
    metrics["temperature_scaling"] = _temperature_scaling(predictions, stored_t, calibrate)
    metrics["data"] = _data_summary(len(loaded.table), predictions, classifier.meta)
    metrics["skipped_files"] = {"count": len(predictions.skipped), "csv": SKIPPED_CSV}
    if by:
        report = subgroup_metrics(
            table, list(by), labels, thresholds=predictions.thresholds,
            groups_col="patient_key", n_boot=n_boot, seed=seed, ci=ci, min_count=min_subgroup,
        )  # fmt: skip
        metrics["subgroups"] = report.to_dict()
    metrics["seen_patients"] = predictor.seen_overlap(loaded.table["patient_id"].tolist())
    metrics["warnings"] = _warnings(metrics, n_boot, classifier.meta)

    figures = _figures(
        table, predictions, metrics, level=aggregate, how=how, n_boot=n_boot, seed=seed, ci=ci
    )
    metrics["files"] = {
        "predictions": PREDICTIONS_CSV,
        "skipped": SKIPPED_CSV,
        "report": REPORT_HTML,
        "plots": {name: f"{name}.png" for name in figures},
    }
    for name, png in figures.items():
        write_bytes(out / f"{name}.png", png)
    write_json(out / METRICS_JSON, metrics)
    write_text(out / REPORT_HTML, evaluation_report(metrics, figures))
    return metrics


def format_summary(metrics: Mapping[str, Any], out: str | Path) -> str:
    """A few lines for the terminal: headline numbers, skipped files and where the files are."""
    lines = [f"{metrics['n_images']} {metrics['level']}(s) of {metrics['n_patients']} patients"]
    for label, entry in metrics["auroc"]["per_class"].items():
        point = metrics["at_operating_point"][label]
        lines.append(
            f"  {label:<20} AUROC {_fmt_ci(entry)}  sensitivity "
            f"{_fmt_ci(point['sensitivity'])}  specificity {_fmt_ci(point['specificity'])}"
        )
    if len(metrics["auroc"]["per_class"]) > 1:
        lines.append(f"  {'macro':<20} AUROC {_fmt_ci(metrics['auroc']['macro'])}")
    lines += [f"warning: {w}" for w in metrics.get("warnings", [])]
    lines.append(f"report: {Path(out) / REPORT_HTML}  (metrics.json, predictions.csv beside it)")
    return "\n".join(lines)


def _fmt_ci(entry: Mapping[str, Any]) -> str:
    value, low, high = entry.get("value"), entry.get("ci_low"), entry.get("ci_high")
    if value is None or not math.isfinite(value):
        return "n/a"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{value:.3f}"
    return f"{value:.3f} ({low:.3f}-{high:.3f})"
