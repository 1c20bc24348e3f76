"""A :class:`~medft.inference.predictor.Predictor` over many files: one table row per image.

Files are decoded in DataLoader workers by the Predictor's own transforms (the training
eval path), batched, and scored; a file that cannot be read is skipped with its reason
(``on_bad_file="skip"``) or stops the run (``"fail"``), as in training. Patients are named
by salted key only; raw IDs stay in the manifest unless the caller asks for them.

Columns of :attr:`Predictions.table`: ``path``, ``patient_key`` (when patients are known;
``patient_id`` only with ``include_patient_id``), ``study_key`` (salted, when the manifest
has a ``study_id``), one true-label column per finding when the input is labelled,
``prob_<f>`` (the probability), ``probcal_<f>`` (temperature-scaled), ``call_<f>`` (1 when
``prob_<f> >= threshold_<f>``), ``threshold_<f>``, ``threshold_source`` and any requested
manifest or metadata columns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from medft.data import patient_key
from medft.data.cache import BAD_FILE_POLICIES, BadFilePolicy, bad_file_reason
from medft.data.dicom import XrayMeta
from medft.errors import ConfigError, DicomReadError, MedftError, medft_cause
from medft.progress import progress

if TYPE_CHECKING:
    from medft.inference.predictor import Predictor

__all__ = [
    "BAD_FILE_POLICIES",
    "META_COLUMNS",
    "Predictions",
    "SkippedFile",
    "call_column",
    "predict_table",
    "prob_column",
    "probcal_column",
    "skipped_table",
    "threshold_column",
]

#: DICOM metadata a subgroup column may name when the manifest lacks it (never patient_hash).
META_COLUMNS = tuple(
    f.name for f in dataclasses.fields(XrayMeta) if f.name not in ("patient_hash", "window_presets")
)


def prob_column(label: str) -> str:
    """Name of the probability column of ``label``."""
    return f"prob_{label}"


def probcal_column(label: str) -> str:
    """Name of the calibrated-probability column of ``label``."""
    return f"probcal_{label}"


def call_column(label: str) -> str:
    """Name of the positive/negative call column of ``label``."""
    return f"call_{label}"


def threshold_column(label: str) -> str:
    """Name of the column holding the threshold ``prob_<label>`` was compared with."""
    return f"threshold_{label}"


@dataclass(frozen=True)
class SkippedFile:
    """An image left out of the predictions: its path and why (no patient data)."""

    path: str
    reason: str


@dataclass
class Predictions:
    """Per-image predictions of a Predictor on a set of inputs.

    Attributes:
        table: One row per readable image (columns in the module docstring).
        labels: Finding names in output order.
        thresholds: Finding -> threshold applied to ``prob_<label>`` for the calls.
        logits: ``(N, L)`` raw logits of the first member, identity view, in table order
            (for temperature fitting and checks).
        skipped: Files that could not be read.
        temperature: The temperature applied to ``prob_``, or None (uncalibrated ``prob_``).
        task: The model's task (``multiclass`` probabilities are a softmax).
        labelled: Whether the table holds true labels.
        threshold_source: Where the thresholds came from.
    """

    table: pd.DataFrame
    labels: list[str]
    thresholds: dict[str, float]
    logits: np.ndarray
    skipped: list[SkippedFile] = field(default_factory=list)
    temperature: float | None = None
    task: str = "multilabel"
    labelled: bool = False
    threshold_source: str = ""


def skipped_table(skipped: Sequence[SkippedFile]) -> pd.DataFrame:
    """The ``skipped_files.csv`` table (``path``, ``reason``)."""
    return pd.DataFrame(
        {"path": [s.path for s in skipped], "reason": [s.reason for s in skipped]},
        columns=["path", "reason"],
    )


class _Images(Dataset):
    """Files as model inputs through the Predictor's transforms, with the reader's metadata."""

    def __init__(self, predictor: Predictor, paths: Sequence[str]) -> None:
        self.predictor = predictor
        self.paths = [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        try:
            image, data = self.predictor.load(path)
        except MedftError as exc:
            return {"index": index, "error": bad_file_reason(path, exc)}
        except RuntimeError as exc:  # MONAI wraps transform errors in RuntimeError
            cause = medft_cause(exc)
            if cause is None:
                raise
            return {"index": index, "error": bad_file_reason(path, cause)}
        meta = data.get("image_meta")
        return {
            "index": index,
            "image": image,
            "meta": meta.as_dict() if isinstance(meta, XrayMeta) else {},
        }


def _collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    kept = [item for item in items if "error" not in item]
    return {
        "index": [item["index"] for item in kept],
        "image": torch.stack([item["image"] for item in kept]) if kept else None,
        "meta": [item["meta"] for item in kept],
        "errors": [(item["index"], item["error"]) for item in items if "error" in item],
    }


def _check_extra(table: pd.DataFrame, extra: Sequence[str]) -> list[str]:
    """The requested extra columns that must come from DICOM metadata (not in the table)."""
    from_meta = [c for c in extra if c not in table.columns]
    unknown = [c for c in from_meta if c not in META_COLUMNS]
    if unknown:
        raise ConfigError(
            f"column(s) {unknown} are neither manifest columns nor DICOM metadata; manifest "
            f"columns: {list(table.columns)}; metadata: {list(META_COLUMNS)}"
        )
    return from_meta


def predict_table(
    predictor: Predictor,
    table: pd.DataFrame,
    *,
    labelled: bool = False,
    batch_size: int = 32,
    num_workers: int = 0,
    on_bad_file: BadFilePolicy = "skip",
    calibrate: bool = False,
    extra_columns: Sequence[str] = (),
    include_patient_id: bool = False,
    salt: str | None = None,
    description: str = "predicting",
    quiet: bool | None = None,
) -> Predictions:
    """Predict every row of ``table`` (a ``path`` column; ``patient_id``/labels optional).

    Args:
        predictor: The model(s) and their preprocessing, thresholds and temperature.
        table: Rows to predict, e.g. from :func:`medft.inference.inputs.input_table`.
        labelled: The table holds the predictor's findings as true-label columns.
        batch_size: Images per forward pass.
        num_workers: DataLoader processes decoding images (0: decode in this process).
        on_bad_file: ``skip`` unreadable files (listed in ``Predictions.skipped``) or
            ``fail`` at the first one with its reason.
        calibrate: ``prob_`` columns hold the temperature-scaled probability (thresholds
            mapped so the calls do not change); otherwise the raw one. ``probcal_`` is
            always the calibrated one.
        extra_columns: Manifest columns or DICOM metadata fields (``view_position``,
            ``manufacturer``, ``patient_sex``, ``age_band``, ...) to carry into the table.
        include_patient_id: Also write the raw ``patient_id`` (off by default).
        salt: Salt of the patient keys (default: ``MEDFT_PATIENT_SALT`` or medft's).
        description: Label of the progress report.
        quiet: Silence the progress report (None: follow ``--quiet``/``MEDFT_QUIET``).

    Raises:
        ConfigError: Bad options or an unknown extra column.
        DicomReadError: ``on_bad_file="fail"`` and a file cannot be read.
    """
    if on_bad_file not in BAD_FILE_POLICIES:
        raise ConfigError(f"on_bad_file={on_bad_file!r} is not one of {BAD_FILE_POLICIES}")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size={batch_size} must be a positive integer")
    if calibrate and predictor.task == "multiclass":
        raise ConfigError("calibrate: temperature scaling is stored for sigmoid outputs only")
    if calibrate and all(t is None for t in predictor.temperatures):
        raise ConfigError(
            f"{predictor.members[0].path}: the checkpoint stores no temperature to calibrate "
            "with (it is fitted on validation data during fit by OperatingPointCallback); "
            "drop --calibrate"
        )
    labels = list(predictor.labels)
    extra_columns = list(dict.fromkeys(extra_columns))
    table = table.reset_index(drop=True)
    from_meta = _check_extra(table, extra_columns)
    dataset = _Images(predictor, table["path"].astype(str).tolist())
    loader = DataLoader(
        dataset,
        batch_size=int(batch_size),
        shuffle=False,
        num_workers=int(num_workers),
        collate_fn=_collate,
        pin_memory=predictor.device.type == "cuda",
    )
    rows: list[int] = []
    raw_parts: list[np.ndarray] = []
    cal_parts: list[np.ndarray] = []
    first_logits: list[np.ndarray] = []
    metas: list[dict[str, Any]] = []
    skipped: list[SkippedFile] = []
    with progress(description, total=len(dataset), unit="images", quiet=quiet) as bar:
        for batch in loader:
            for index, reason in batch["errors"]:
                path = dataset.paths[index]
                if on_bad_file == "fail":
                    raise DicomReadError(
                        f"{path}: {reason}. Stopped (on_bad_file=fail); fix or remove the file, "
                        "or use on_bad_file=skip to leave unreadable files out"
                    )
                skipped.append(SkippedFile(path, reason))
            if batch["image"] is not None:
                logits = predictor.logits(batch["image"])
                raw, cal = predictor.probabilities_from_logits(logits)
                raw_parts.append(raw)
                cal_parts.append(cal)
                first_logits.append(logits[0, 0].numpy().astype(np.float64))
                rows.extend(batch["index"])
                metas.extend(batch["meta"])
            bar.advance(len(batch["index"]) + len(batch["errors"]))
    width = len(labels)
    raw = np.concatenate(raw_parts) if raw_parts else np.zeros((0, width))
    cal = np.concatenate(cal_parts) if cal_parts else np.zeros((0, width))
    z = np.concatenate(first_logits) if first_logits else np.zeros((0, width))
    probs = cal if calibrate else raw
    thresholds = predictor.thresholds if calibrate else predictor.raw_thresholds
    calls = predictor.call(probs, calibrated=calibrate)
    out = _table(
        table.iloc[rows].reset_index(drop=True),
        labels if labelled else [],
        labels,
        probs,
        cal,
        calls,
        thresholds,
        predictor.threshold_source,
        extra_columns,
        from_meta,
        metas,
        include_patient_id,
        salt,
    )
    return Predictions(
        out,
        labels,
        dict(thresholds),
        z,
        skipped,
        predictor.temperature if calibrate else None,
        predictor.task,
        labelled,
        predictor.threshold_source,
    )


def _table(
    rows: pd.DataFrame,
    true_labels: Sequence[str],
    labels: Sequence[str],
    probs: np.ndarray,
    calibrated: np.ndarray,
    calls: np.ndarray,
    thresholds: dict[str, float],
    threshold_source: str,
    extra_columns: Sequence[str],
    from_meta: Sequence[str],
    metas: Sequence[dict[str, Any]],
    include_patient_id: bool,
    salt: str | None,
) -> pd.DataFrame:
    out = pd.DataFrame({"path": rows["path"].astype(str)})
    if "patient_id" in rows.columns:
        ids = rows["patient_id"].astype(str)
        keys = {pid: patient_key(pid, salt) for pid in ids.unique()}
        out["patient_key"] = ids.map(keys)
        if include_patient_id:
            out["patient_id"] = ids
    if "study_id" in rows.columns:
        studies = rows["study_id"].astype(str)
        out["study_key"] = studies.map({s: patient_key(s, salt) for s in studies.unique()})
    for label in true_labels:
        out[label] = rows[label].astype(float)
    empty = np.zeros(0)
    for j, label in enumerate(labels):
        out[prob_column(label)] = probs[:, j] if len(probs) else empty
    for j, label in enumerate(labels):
        out[probcal_column(label)] = calibrated[:, j] if len(calibrated) else empty
    for j, label in enumerate(labels):
        out[call_column(label)] = calls[:, j] if len(calls) else empty.astype(int)
    for label in labels:
        out[threshold_column(label)] = float(thresholds[label])
    out["threshold_source"] = threshold_source
    for name in extra_columns:
        if name in from_meta:
            out[name] = [_meta_value(m.get(name)) for m in metas]
        else:
            out[name] = rows[name].to_numpy()
    return out


def _meta_value(value: Any) -> Any:
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return value
