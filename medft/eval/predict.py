"""Run a trained classifier over a manifest: one row of probabilities and calls per image.

Images go through the same deterministic transforms the model saw on its validation data
(read in display space, fitted into the checkpoint's square ``image_size`` with its
``fit_mode``, quantised to the cached form), in batches. A file that cannot be read is
skipped with its reason (``on_bad_file="skip"``) or stops the run (``"fail"``), as in
training. Patients are named by salted key only; raw IDs stay in the manifest unless the
caller asks for them.

Columns of :attr:`Predictions.table`: ``path``, ``patient_key`` (``patient_id`` only with
``include_patient_id``), one true-label column per finding (1/0/NaN), ``prob_<label>``,
``call_<label>`` (1 when ``prob >= threshold``), ``study_key`` (salted, when the manifest
has a ``study_id``) and any requested manifest or metadata columns.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from medft.data._dicom_meta import XrayMeta
from medft.data._hashing import patient_key
from medft.data.cache import bad_file_reason
from medft.data.manifest import Manifest
from medft.data.transforms import build_transforms, metadata_off
from medft.errors import ConfigError, DicomReadError, MedftError, medft_cause
from medft.eval.calibration import apply_temperature
from medft.model.checkpoint import LoadedClassifier

__all__ = [
    "BAD_FILE_POLICIES",
    "META_COLUMNS",
    "Predictions",
    "SkippedFile",
    "calibrated_thresholds",
    "call_column",
    "predict_manifest",
    "prob_column",
    "skipped_table",
]

BAD_FILE_POLICIES = ("skip", "fail")
#: DICOM metadata a subgroup column may name when the manifest lacks it (never patient_hash).
META_COLUMNS = tuple(
    f.name for f in dataclasses.fields(XrayMeta) if f.name not in ("patient_hash", "window_presets")
)


def prob_column(label: str) -> str:
    """Name of the probability column of ``label``."""
    return f"prob_{label}"


def call_column(label: str) -> str:
    """Name of the positive/negative call column of ``label``."""
    return f"call_{label}"


@dataclass(frozen=True)
class SkippedFile:
    """An image left out of the predictions: its path and why (no patient data)."""

    path: str
    reason: str


@dataclass
class Predictions:
    """Per-image predictions of one classifier on one manifest.

    Attributes:
        table: One row per readable image (columns in the module docstring).
        labels: Finding names in output order.
        thresholds: Finding -> threshold applied to ``prob_<label>`` for the calls.
        logits: ``(N, L)`` raw logits in table order (for temperature scaling).
        skipped: Files that could not be read.
        temperature: The temperature applied to the probabilities, or None.
        task: The checkpoint's task (``multiclass`` probabilities are a softmax).
    """

    table: pd.DataFrame
    labels: list[str]
    thresholds: dict[str, float]
    logits: np.ndarray
    skipped: list[SkippedFile] = field(default_factory=list)
    temperature: float | None = None
    task: str = "multilabel"


def skipped_table(skipped: Sequence[SkippedFile]) -> pd.DataFrame:
    """The ``skipped_files.csv`` table (``path``, ``reason``)."""
    return pd.DataFrame(
        {"path": [s.path for s in skipped], "reason": [s.reason for s in skipped]},
        columns=["path", "reason"],
    )


def calibrated_thresholds(thresholds: dict[str, float], temperature: float) -> dict[str, float]:
    """Map thresholds on raw probabilities to the same decisions on temperature-scaled ones.

    sigmoid(z / T) is monotone in z, so ``p >= t`` and ``sigmoid(logit(p) / T) >=
    sigmoid(logit(t) / T)`` call exactly the same images.
    """
    return {
        name: float(apply_temperature(np.array([t]), temperature, kind="probs")[0])
        if 0.0 < t < 1.0
        else float(t)
        for name, t in thresholds.items()
    }


class _ManifestImages(Dataset):
    """Manifest rows as eval-mode model inputs, with the metadata the reader extracted."""

    def __init__(self, paths: Sequence[str], image_size: int, fit_mode: str, compact_dtype: str):
        self.paths = [str(p) for p in paths]
        self.prefix, self.to_float = build_transforms(
            image_size=image_size, fit_mode=fit_mode, train=False, compact_dtype=compact_dtype
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        try:
            data = self.prefix({"image": path})
        except MedftError as exc:
            return {"index": index, "error": bad_file_reason(path, exc)}
        except RuntimeError as exc:  # MONAI wraps transform errors in RuntimeError
            cause = medft_cause(exc)
            if cause is None:
                raise
            return {"index": index, "error": bad_file_reason(path, cause)}
        with metadata_off():
            image = self.to_float({"image": data["image"]})["image"]
        meta = data.get("image_meta")
        return {
            "index": index,
            "image": torch.as_tensor(image, dtype=torch.float32),
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


def _check_columns(manifest: Manifest, labels: Sequence[str], extra: Sequence[str]) -> list[str]:
    """The requested extra columns that must come from DICOM metadata (not in the manifest)."""
    missing_labels = [name for name in labels if name not in manifest.labels]
    if missing_labels:
        raise ConfigError(
            f"{manifest.source or 'manifest'}: no label column for finding(s) {missing_labels} "
            f"the checkpoint predicts; its labels are {list(manifest.labels)}. Evaluate on a "
            "manifest labelled with the checkpoint's findings"
        )
    from_meta = [c for c in extra if c not in manifest.table.columns]
    unknown = [c for c in from_meta if c not in META_COLUMNS]
    if unknown:
        raise ConfigError(
            f"column(s) {unknown} are neither manifest columns nor DICOM metadata; manifest "
            f"columns: {list(manifest.table.columns)}; metadata: {list(META_COLUMNS)}"
        )
    return from_meta


def predict_manifest(
    classifier: LoadedClassifier,
    manifest: Manifest,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    on_bad_file: str = "skip",
    calibrate: bool = False,
    extra_columns: Sequence[str] = (),
    include_patient_id: bool = False,
    compact_dtype: str = "uint8",
    salt: str | None = None,
) -> Predictions:
    """Predict every image of ``manifest`` with ``classifier``.

    Args:
        classifier: A loaded checkpoint (:func:`medft.model.checkpoint.load_classifier`).
        manifest: The images and their true labels (must hold the checkpoint's findings).
        batch_size: Images per forward pass.
        num_workers: DataLoader processes decoding images (0: decode in this process).
        on_bad_file: ``skip`` unreadable files (listed in ``Predictions.skipped``) or
            ``fail`` at the first one with its reason.
        calibrate: Report temperature-scaled probabilities (the checkpoint's stored
            temperature); thresholds are mapped so the calls do not change.
        extra_columns: Manifest columns or DICOM metadata fields (``view_position``,
            ``manufacturer``, ``patient_sex``, ``age_band``, ...) to carry into the table,
            e.g. for subgroup metrics.
        include_patient_id: Also write the raw ``patient_id`` (off by default: patients are
            named by salted key).
        compact_dtype: The cached pixel type used in training (``uint8`` or ``uint16``).
        salt: Salt of the patient keys (default: ``MEDFT_PATIENT_SALT`` or medft's).

    Raises:
        ConfigError: Bad options, missing finding columns, an unknown extra column, or
            ``calibrate`` with no stored temperature.
        DicomReadError: ``on_bad_file="fail"`` and a file cannot be read.
    """
    if on_bad_file not in BAD_FILE_POLICIES:
        raise ConfigError(f"on_bad_file={on_bad_file!r} is not one of {BAD_FILE_POLICIES}")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size={batch_size} must be a positive integer")
    labels = list(classifier.labels)
    extra_columns = list(dict.fromkeys(extra_columns))
    from_meta = _check_columns(manifest, labels, extra_columns)
    temperature = _temperature(classifier, calibrate)
    table = manifest.table.reset_index(drop=True)
    dataset = _ManifestImages(
        table["path"].astype(str).tolist(),
        classifier.image_size,
        classifier.fit_mode,
        compact_dtype,
    )
    loader = DataLoader(
        dataset,
        batch_size=int(batch_size),
        shuffle=False,
        num_workers=int(num_workers),
        collate_fn=_collate,
    )
    model = classifier.model.eval()
    device = next(model.parameters()).device
    rows: list[int] = []
    logits: list[np.ndarray] = []
    metas: list[dict[str, Any]] = []
    skipped: list[SkippedFile] = []
    with torch.inference_mode():
        for batch in loader:
            for index, reason in batch["errors"]:
                path = dataset.paths[index]
                if on_bad_file == "fail":
                    raise DicomReadError(
                        f"{path}: {reason}. Stopped (on_bad_file=fail); fix or remove the file, "
                        "or use on_bad_file=skip to leave unreadable files out"
                    )
                skipped.append(SkippedFile(path, reason))
            if batch["image"] is None:
                continue
            out = model(batch["image"].to(device)).float().cpu().numpy()
            logits.append(out.astype(np.float64))
            rows.extend(batch["index"])
            metas.extend(batch["meta"])
    z = np.concatenate(logits) if logits else np.zeros((0, len(labels)))
    probs = _probabilities(z, classifier.task, temperature)
    thresholds = dict(classifier.thresholds)
    if temperature is not None:
        thresholds = calibrated_thresholds(thresholds, temperature)
    out_table = _table(
        table.iloc[rows].reset_index(drop=True),
        labels,
        probs,
        thresholds,
        extra_columns,
        from_meta,
        metas,
        include_patient_id,
        salt,
    )
    return Predictions(out_table, labels, thresholds, z, skipped, temperature, classifier.task)


def _temperature(classifier: LoadedClassifier, calibrate: bool) -> float | None:
    if not calibrate:
        return None
    temperature = classifier.temperature
    if classifier.task == "multiclass":
        raise ConfigError("calibrate: temperature scaling is stored for sigmoid outputs only")
    if temperature is None or not math.isfinite(float(temperature)) or float(temperature) <= 0:
        raise ConfigError(
            f"{classifier.path}: the checkpoint stores no temperature to calibrate with "
            "(it is fitted on validation data during fit by OperatingPointCallback); "
            "drop --calibrate"
        )
    return float(temperature)


def _probabilities(z: np.ndarray, task: str, temperature: float | None) -> np.ndarray:
    if task == "multiclass":
        shifted = z - z.max(axis=1, keepdims=True) if z.size else z
        e = np.exp(shifted)
        return e / e.sum(axis=1, keepdims=True) if z.size else z
    return apply_temperature(z, 1.0 if temperature is None else temperature, kind="logits")


def _table(
    rows: pd.DataFrame,
    labels: Sequence[str],
    probs: np.ndarray,
    thresholds: dict[str, float],
    extra_columns: Sequence[str],
    from_meta: Sequence[str],
    metas: Sequence[dict[str, Any]],
    include_patient_id: bool,
    salt: str | None,
) -> pd.DataFrame:
    ids = rows["patient_id"].astype(str)
    keys = {pid: patient_key(pid, salt) for pid in ids.unique()}
    out = pd.DataFrame({"path": rows["path"].astype(str), "patient_key": ids.map(keys)})
    if include_patient_id:
        out["patient_id"] = ids
    if "study_id" in rows.columns:
        studies = rows["study_id"].astype(str)
        out["study_key"] = studies.map({s: patient_key(s, salt) for s in studies.unique()})
    for label in labels:
        out[label] = rows[label].astype(float)
    for j, label in enumerate(labels):
        out[prob_column(label)] = probs[:, j] if len(probs) else np.zeros(0)
    for j, label in enumerate(labels):
        column = probs[:, j] if len(probs) else np.zeros(0)
        out[call_column(label)] = (column >= thresholds.get(label, 0.5)).astype(int)
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
