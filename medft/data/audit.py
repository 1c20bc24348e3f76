"""``medft data audit``: could a model predict the labels from things that are not disease?

Before any training, the audit asks of every label how well it can be predicted from
acquisition facts alone: image size and aspect, pixel spacing, bits stored, photometric
interpretation, compression, modality, vendor and model, view, body part, padding, the
raw intensity level, the manifest's own metadata columns, all of them together, and two
tiny image probes (a 16×16 thumbnail, and the image border with its centre masked, where
burned-in markers and collimation live). Each predictor is scored by out-of-fold AUROC
under patient-grouped cross-validation, with a patient-bootstrap CI. A predictor that
reaches the threshold (0.70 by default) with a CI above chance is a *finding*: a model
could learn that shortcut instead of the disease (Zech et al. 2018; DeGrave et al. 2021).
See docs/bias.md.
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from medft._io import check_output_dir
from medft.data import _audit_models as models
from medft.data._audit_features import (
    ImageFeatures,
    border_mask,
    feature_frame,
    read_features,
    usable_cpus,
)
from medft.data._audit_report import AuditReport
from medft.data._audit_types import (
    BORDER_PROBE,
    COLUMN_PREFIX,
    COMBINED,
    PROBES,
    REVIEW_ONLY,
    THUMBNAIL_PROBE,
    AuditFinding,
    FeatureResult,
    describe,
)
from medft.data.manifest import RESERVED_COLUMNS, Manifest, load_manifest
from medft.data.splits import kfold_split
from medft.errors import ConfigError, DataError

__all__ = [
    "BORDER_PROBE",
    "COMBINED",
    "PROBES",
    "QUICK_MAX_IMAGES",
    "REVIEW_ONLY",
    "THUMBNAIL_PROBE",
    "AuditFinding",
    "AuditReport",
    "FeatureResult",
    "audit_manifest",
    "describe",
]

QUICK_MAX_IMAGES = 500
"""A quick audit (start of ``fit``/``cv``) looks at headers of at most this many images."""

_MIN_CLASS_PATIENTS = 5
_MAX_LEVEL_SHARE = 0.5  # a text column with more distinct values than this share is an ID
_MIN_ID_LEVELS = 20
_DISTRIBUTION_FEATURES = 3
_HIST_BINS = 20
_MAX_LEVELS_SHOWN = 10
_IDENTIFYING_WORDS = frozenset(
    {"name", "birth", "dob", "date", "time", "accession", "mrn", "id", "identifier", "ssn",
     "address", "phone", "email", "initials"}
)  # fmt: skip
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+")
_LABEL_LIKE = frozenset({"0", "1", "-1", "0.0", "1.0", "-1.0", "true", "false", ""})


# ------------------------------------------------------------------------ the audit


def audit_manifest(
    manifest_or_path: Manifest | str | os.PathLike[str],
    *,
    labels: Sequence[str] | None = None,
    threshold: float = 0.70,
    folds: int = 5,
    seed: int = 0,
    workers: int | None = None,
    max_images: int | None = None,
    probes: bool = True,
    quick: bool = False,
    n_boot: int = 500,
    exclude_columns: Sequence[str] = (),
    out: str | os.PathLike[str] | None = None,
) -> AuditReport:
    """Measure how well each label can be predicted from acquisition shortcuts.

    Args:
        manifest_or_path: A loaded :class:`Manifest`, or a manifest CSV / class folder.
        labels: Labels to audit (default: all of the manifest's labels).
        threshold: AUROC at or above which a predictor is reported as a finding.
        folds: Patient-grouped cross-validation folds.
        seed: Seed of the folds, the subsample and the bootstrap.
        workers: Reader processes (default: the CPUs available).
        max_images: Audit a random subset of whole patients with at most this many images.
        probes: Run the thumbnail and border image probes (needs decoded pixels).
        quick: Headers only, at most :data:`QUICK_MAX_IMAGES` images, no probes, fewer
            bootstrap resamples: seconds, for the start of ``fit`` and ``cv``.
        n_boot: Patient-bootstrap resamples per estimate.
        exclude_columns: Manifest columns never to use as features (for example a column
            derived from the label that the automatic rules do not recognise).
        out: Folder to write audit.json and audit.html into (checked before the audit
            starts, so a bad folder costs no work); ``None`` writes nothing.

    Returns:
        The :class:`AuditReport`.

    Raises:
        ConfigError: An argument is out of range or names an unknown label.
        DataError: The manifest is invalid, or no image could be read.
    """
    started = time.perf_counter()
    _check_arguments(threshold, folds, max_images, n_boot)
    if out is not None:
        check_output_dir(out)
    manifest = (
        manifest_or_path
        if isinstance(manifest_or_path, Manifest)
        else load_manifest(manifest_or_path, check_files=False)
    )
    audited_labels = _choose_labels(manifest, labels)
    if quick:
        max_images = min(max_images or QUICK_MAX_IMAGES, QUICK_MAX_IMAGES)
        probes = False
        n_boot = min(n_boot, 200)
    depth = "header" if quick else "pixels"
    table = manifest.table.reset_index(drop=True)
    table = _subsample(table, max_images, seed)

    n_workers = max(1, int(workers if workers is not None else usable_cpus()))
    table, kept, n_unreadable = _read_images(manifest, table, depth, n_workers)
    skipped: list[dict[str, str]] = []
    numeric, categorical = _feature_tables(manifest, table, kept, exclude_columns, skipped)
    thumbs = borders = None
    if probes and depth == "pixels":
        thumbs = np.stack([r.thumb.ravel() for r in kept])
        ring = border_mask().ravel()
        borders = np.stack([r.border.ravel()[ring] for r in kept])

    fold_of = _folds(table, audited_labels, folds, seed)
    report = AuditReport(
        source=None if manifest.source is None else str(manifest.source),
        labels=audited_labels,
        threshold=float(threshold),
        folds=int(folds),
        seed=int(seed),
        n_boot=int(n_boot),
        depth=depth,
        probes=thumbs is not None,
        n_images=len(manifest.table),
        n_audited=len(table),
        n_patients=int(table["patient_id"].nunique()),
        n_unreadable=n_unreadable,
        results=[],
        skipped=skipped,
        workers=n_workers,
    )
    with threadpool_limits(limits=1):  # small models; threads only fight the other jobs
        for label in audited_labels:
            _audit_label(report, label, table, numeric, categorical, thumbs, borders, fold_of)
        if thumbs is not None:
            report.difference_maps = _difference_maps(table, audited_labels, kept)
    report.elapsed_s = round(time.perf_counter() - started, 3)
    if out is not None:
        report.write(out)
    return report


def _read_images(
    manifest: Manifest, table: pd.DataFrame, depth: str, workers: int
) -> tuple[pd.DataFrame, list[ImageFeatures], int]:
    """Read every image's features; keep the readable rows. DataError if none can be read."""
    results = read_features(table["path"].astype(str).tolist(), depth=depth, workers=workers)
    readable = np.array([r.error is None for r in results])
    if not readable.any():
        first = next((r.error for r in results if r.error), "no images")
        raise DataError(
            f"{manifest.source or 'manifest'}: none of the {len(results)} images could be read "
            f"(first reason: {first}); run `medft data check` to see every file"
        )
    kept = [r for r in results if r.error is None]
    return table[readable].reset_index(drop=True), kept, int((~readable).sum())


def _feature_tables(
    manifest: Manifest,
    table: pd.DataFrame,
    kept: Sequence[ImageFeatures],
    exclude_columns: Sequence[str],
    skipped: list[dict[str, str]],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Numeric and categorical feature tables: image features plus usable manifest columns."""
    image_features = feature_frame(kept)
    column_features = _manifest_features(manifest, table, exclude_columns, skipped)
    column_features = _drop_copies(column_features, image_features, skipped)
    return _split_kinds(pd.concat([image_features, column_features], axis=1), skipped)


def _check_arguments(threshold: float, folds: int, max_images: int | None, n_boot: int) -> None:
    if not 0.5 <= threshold <= 1.0:
        raise ConfigError(f"threshold={threshold} must be an AUROC between 0.5 and 1")
    if int(folds) != folds or folds < 2:
        raise ConfigError(f"folds={folds}: use an integer >= 2")
    if max_images is not None and (int(max_images) != max_images or max_images < 2):
        raise ConfigError(f"max_images={max_images}: use an integer >= 2 (or None for all)")
    if int(n_boot) != n_boot or n_boot < 10:
        raise ConfigError(f"n_boot={n_boot}: use an integer >= 10")


def _choose_labels(manifest: Manifest, labels: Sequence[str] | None) -> list[str]:
    if labels is None:
        return list(manifest.labels)
    chosen = list(labels)
    unknown = [name for name in chosen if name not in manifest.labels]
    if unknown or not chosen:
        raise ConfigError(
            f"labels={chosen}: {', '.join(map(repr, unknown)) or 'nothing'} is not a label of "
            f"the manifest; its labels are {', '.join(map(repr, manifest.labels))}"
        )
    return chosen


def _subsample(table: pd.DataFrame, max_images: int | None, seed: int) -> pd.DataFrame:
    """Whole patients in a seeded random order until ``max_images`` images are reached."""
    if max_images is None or len(table) <= max_images:
        return table
    patients = table["patient_id"].astype(str)
    order = np.random.default_rng([seed, 7]).permutation(patients.unique())
    sizes = patients.value_counts().reindex(order).to_numpy()
    keep = set(order[: max(1, int(np.searchsorted(np.cumsum(sizes), max_images, "right")))])
    return table[patients.isin(keep)].reset_index(drop=True)


def _manifest_features(
    manifest: Manifest,
    table: pd.DataFrame,
    exclude: Sequence[str],
    skipped: list[dict[str, str]],
) -> pd.DataFrame:
    """The manifest's metadata columns that may be features (never labels or label copies)."""
    out = {}
    never = set(RESERVED_COLUMNS) | set(manifest.labels) | set(exclude)
    for name in table.columns:
        if name in never:
            continue
        values = table[name]
        if name.startswith("lesion_"):
            skipped.append({"feature": name, "reason": "lesion annotation (derived from labels)"})
            continue
        if _may_identify(name):
            skipped.append({"feature": name, "reason": "may identify patients (by its name)"})
            continue
        text = values.dropna().astype(str).str.strip().str.lower()
        if text.isin(_LABEL_LIKE).all():
            skipped.append({"feature": name, "reason": "holds only label values (0/1/-1)"})
            continue
        if pd.api.types.is_numeric_dtype(values):
            out[COLUMN_PREFIX + name] = values.astype(float).to_numpy()
            continue
        n_levels = values.nunique()
        if n_levels > max(_MIN_ID_LEVELS, _MAX_LEVEL_SHARE * len(values)):
            skipped.append(
                {"feature": name, "reason": f"identifier or free text ({n_levels} distinct values)"}
            )
            continue
        out[COLUMN_PREFIX + name] = values.fillna("(none)").astype(str).to_numpy()
    return pd.DataFrame(out, index=table.index)


def _may_identify(column: str) -> bool:
    """Whether a column's name says it may identify a patient (its values would be reported).

    ``PatientName``, ``patient_id2``, ``AccessionNumber``, ``study_date`` do; ``grid``,
    ``site`` do not.
    """
    words = [word.lower() for word in _WORD.findall(column)]
    return any(w in _IDENTIFYING_WORDS or w.removesuffix("s") in _IDENTIFYING_WORDS for w in words)


def _drop_copies(
    columns: pd.DataFrame, image_features: pd.DataFrame, skipped: list[dict[str, str]]
) -> pd.DataFrame:
    """Drop manifest columns that group the images exactly like a header feature does.

    ``labels.csv`` often repeats header fields (``manufacturer``, ``view``); the copy adds
    a duplicate row to every table and nothing else.
    """
    keep = []
    for name in columns.columns:
        column = columns[name].astype(str)
        twin = next(
            (
                feature
                for feature in image_features.columns
                if _same_grouping(column, image_features[feature].astype(str))
            ),
            None,
        )
        if twin is None:
            keep.append(name)
        else:
            skipped.append({"feature": name, "reason": f"same grouping as {twin!r}"})
    return columns[keep]


def _same_grouping(a: pd.Series, b: pd.Series) -> bool:
    n_a, n_b = a.nunique(), b.nunique()
    if n_a != n_b or n_a < 2:
        return False
    return len(pd.DataFrame({"a": a, "b": b}).drop_duplicates()) == n_a


def _split_kinds(
    features: pd.DataFrame, skipped: list[dict[str, str]]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Numeric and categorical features that vary; constant ones are noted and dropped."""
    numeric, categorical = {}, {}
    for name in features.columns:
        values = features[name]
        is_number = pd.api.types.is_numeric_dtype(values)
        if is_number and values.isna().all():
            skipped.append({"feature": name, "reason": "not available (headers only or not set)"})
            continue
        if values.nunique(dropna=False) < 2:
            skipped.append({"feature": name, "reason": f"constant ({values.iloc[0]})"})
            continue
        (numeric if is_number else categorical)[name] = values
    index = features.index
    return pd.DataFrame(numeric, index=index), pd.DataFrame(categorical, index=index)


def _folds(table: pd.DataFrame, labels: list[str], k: int, seed: int) -> np.ndarray:
    """Patient-grouped, label-stratified fold of every image (the project's one splitter)."""
    n_patients = table["patient_id"].nunique()
    if n_patients < k:
        raise DataError(
            f"only {n_patients} patient(s) among the audited images for {k} folds; "
            f"use folds <= {n_patients} or audit more images"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rare labels: a fold without positives is expected
        assignment = kfold_split(table, labels=labels, k=k, seed=seed)
    return assignment["fold"].to_numpy()


def _audit_label(
    report: AuditReport,
    label: str,
    table: pd.DataFrame,
    numeric: pd.DataFrame,
    categorical: pd.DataFrame,
    thumbs: np.ndarray | None,
    borders: np.ndarray | None,
    fold_of: np.ndarray,
) -> None:
    known = table[label].notna().to_numpy()
    y = table[label].to_numpy()[known].astype(float)
    patients = table["patient_id"].astype(str).to_numpy()[known]
    pos_patients = len(set(patients[y == 1]))
    neg_patients = len(set(patients[y == 0]))
    if min(pos_patients, neg_patients) < _MIN_CLASS_PATIENTS:
        report.label_notes[label] = (
            f"not audited: {pos_patients} positive and {neg_patients} negative patient(s); "
            f"needs at least {_MIN_CLASS_PATIENTS} of each"
        )
        return
    folds = fold_of[known]
    seed = report.seed

    def add(feature: str, kind: str, scores: np.ndarray) -> None:
        found = models.estimate(scores, y, patients, n_boot=report.n_boot, seed=seed)
        report.results.append(
            FeatureResult(label, feature, kind, found.auroc, found.ci_low, found.ci_high, len(y))
        )

    for name in numeric.columns:
        add(name, "numeric", models.oof_numeric(numeric[name].to_numpy()[known], y, folds))
    for name in categorical.columns:
        add(
            name,
            "categorical",
            models.oof_categorical(categorical[name].to_numpy()[known], y, folds),
        )
    if len(numeric.columns) + len(categorical.columns) > 1:
        scores = models.oof_all_features(
            numeric[known].reset_index(drop=True),
            categorical[known].reset_index(drop=True),
            y,
            folds,
        )
        add(COMBINED, "combined", scores)
    if thumbs is not None and borders is not None:
        add(THUMBNAIL_PROBE, "probe", models.oof_probe(thumbs[known], y, folds))
        add(BORDER_PROBE, "probe", models.oof_probe(borders[known], y, folds))
    report.distributions[label] = _distributions(report, label, numeric, categorical, known, y)


def _distributions(
    report: AuditReport,
    label: str,
    numeric: pd.DataFrame,
    categorical: pd.DataFrame,
    known: np.ndarray,
    y: np.ndarray,
) -> dict[str, dict[str, Any]]:
    """Class-wise histograms / level counts of the label's strongest single features."""
    single = [
        r for r in report.results if r.label == label and r.kind in ("numeric", "categorical")
    ]
    single.sort(key=lambda r: -r.auroc if math.isfinite(r.auroc) else 0.0)
    out: dict[str, dict[str, Any]] = {}
    for result in single[:_DISTRIBUTION_FEATURES]:
        if result.kind == "numeric":
            values = numeric[result.feature].to_numpy()[known]
            out[result.feature] = _histogram(values, y)
        else:
            values = categorical[result.feature].to_numpy()[known]
            out[result.feature] = _level_counts(values, y)
    return out


def _histogram(values: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    finite = np.isfinite(values)
    edges = np.histogram_bin_edges(values[finite], bins=_HIST_BINS)
    by_class = {}
    for name, flag in (("negative", 0.0), ("positive", 1.0)):
        chosen = (y == flag) & finite
        counts, _ = np.histogram(values[chosen], bins=edges)
        by_class[name] = counts.astype(int).tolist()
        by_class[f"{name}_missing"] = int(((y == flag) & ~finite).sum())
    return {"kind": "numeric", "edges": edges.tolist(), **by_class}


def _level_counts(values: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    levels = pd.Series(values).value_counts()
    shown = list(levels.index[:_MAX_LEVELS_SHOWN])
    grouped = np.where(pd.Series(values).isin(shown), values, "(other)")
    order = shown + (["(other)"] if len(levels) > len(shown) else [])
    counts = {}
    for name, flag in (("negative", 0.0), ("positive", 1.0)):
        series = pd.Series(grouped[y == flag]).value_counts()
        counts[name] = [int(series.get(level, 0)) for level in order]
    return {"kind": "categorical", "levels": [str(v) for v in order], **counts}


def _difference_maps(
    table: pd.DataFrame, labels: list[str], kept: Sequence[ImageFeatures]
) -> dict[str, list[list[float]]]:
    """Mean positive minus mean negative pad-to-square thumbnail per label."""
    squares = np.stack([r.border for r in kept])
    maps = {}
    for label in labels:
        y = table[label].to_numpy()
        if (y == 1).any() and (y == 0).any():
            diff = squares[y == 1].mean(axis=0) - squares[y == 0].mean(axis=0)
            maps[label] = np.round(diff, 4).tolist()
    return maps
