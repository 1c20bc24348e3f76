"""``medft predict``: score new images with a trained model and write the results.

No labels needed. The input is a manifest CSV, a folder (searched recursively) or one
file; the model is one checkpoint, several (an ensemble), or the fold models of a
``medft cv`` study. Writes into ``out``:

- ``predictions.csv``: one row per readable image (path, salted patient key when the input
  names patients, ``prob_<f>``, ``probcal_<f>``, ``call_<f>``, ``threshold_<f>``,
  ``threshold_source``; see :mod:`medft.inference.batch`);
- ``skipped_files.csv``: every unreadable file with its reason;
- ``run.json``: the checkpoints' SHA-256, versions, the command line and the settings, and
  how many input patients the model trained or validated on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medft._io import check_output_dir, write_json
from medft.data.cache import BadFilePolicy
from medft.errors import ConfigError
from medft.eval.ensemble import study_predictor
from medft.eval.evaluate import write_table
from medft.inference import (
    Predictions,
    Predictor,
    input_table,
    predict_table,
    skipped_table,
)
from medft.provenance import RUN_JSON, run_record

__all__ = ["PREDICTIONS_CSV", "SKIPPED_CSV", "PredictRun", "format_summary", "predict"]

log = logging.getLogger("medft.predict")

PREDICTIONS_CSV = "predictions.csv"
SKIPPED_CSV = "skipped_files.csv"


@dataclass
class PredictRun:
    """What :func:`predict` produced.

    Attributes:
        predictions: The table, thresholds and skipped files.
        record: What ``run.json`` holds.
        out: The output folder.
    """

    predictions: Predictions
    record: dict[str, Any]
    out: Path


def build_predictor(
    checkpoints: Sequence[str | Path] = (),
    *,
    study: str | Path | None = None,
    tta: bool = False,
    tta_flip: bool = False,
    device: str = "cpu",
) -> Predictor:
    """One checkpoint, an ensemble of several, or a study's fold models (exactly one source)."""
    if study is not None and checkpoints:
        raise ConfigError("give either --checkpoint (one or more) or --study, not both")
    if study is not None:
        return study_predictor(study, tta=tta, tta_flip=tta_flip, device=device)
    if not checkpoints:
        raise ConfigError("give a model: --checkpoint CKPT (repeatable) or --study DIR")
    return Predictor.from_checkpoints(list(checkpoints), tta=tta, tta_flip=tta_flip, device=device)


def predict(
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    checkpoints: Sequence[str | Path] = (),
    study: str | Path | None = None,
    tta: bool = False,
    tta_flip: bool = False,
    batch_size: int = 32,
    num_workers: int = 0,
    on_bad_file: BadFilePolicy = "skip",
    include_patient_id: bool = False,
    device: str = "auto",
    quiet: bool | None = None,
    argv: Sequence[str] | None = None,
) -> PredictRun:
    """Predict every image of ``inputs`` and write the results into ``out``.

    Args:
        inputs: A manifest CSV, a folder, an image file, or a list of image files.
        out: Output folder (created).
        checkpoints: One checkpoint, or several for an ensemble (mean calibrated probability).
        study: A ``medft cv`` folder: its fold models as an ensemble, with the operating
            point chosen on the study's out-of-fold predictions.
        tta: Average over small shifts and zooms of each image.
        tta_flip: Add a left-right flip to the views (off: chest anatomy is not symmetric).
        batch_size: Images per forward pass.
        num_workers: Processes decoding images.
        on_bad_file: ``skip`` unreadable files (listed in skipped_files.csv) or ``fail``.
        include_patient_id: Write raw patient IDs (off: salted keys only).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        quiet: Silence the progress report.
        argv: The command line recorded in run.json (default: this process's).

    Returns:
        The predictions and the run record.
    """
    out = check_output_dir(out)  # a bad --out is found now, not after the inference
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    predictor = build_predictor(checkpoints, study=study, tta=tta, tta_flip=tta_flip, device=device)
    table, _ = input_table(inputs, labels=(), exclude=out)
    predictions = predict_table(
        predictor,
        table,
        labelled=False,
        batch_size=batch_size,
        num_workers=num_workers,
        on_bad_file=on_bad_file,
        include_patient_id=include_patient_id,
        quiet=quiet,
    )
    seen = None
    if "patient_id" in table.columns:
        seen = predictor.seen_overlap(table["patient_id"].astype(str).tolist())
        if seen and seen["warning"]:
            log.warning("%s", seen["warning"])
    out.mkdir(parents=True, exist_ok=True)
    write_table(out / PREDICTIONS_CSV, predictions.table)
    write_table(out / SKIPPED_CSV, skipped_table(predictions.skipped))
    record = run_record(
        argv=argv,
        settings={
            "inputs": [str(p) for p in inputs]
            if isinstance(inputs, (list, tuple))
            else str(inputs),
            "study": None if study is None else str(study),
            "batch_size": batch_size,
            "num_workers": num_workers,
            "on_bad_file": on_bad_file,
            "include_patient_id": include_patient_id,
            "device": str(device),
        },
    )
    record["model"] = predictor.info()
    record["images"] = {"predicted": len(predictions.table), "skipped": len(predictions.skipped)}
    record["seen_patients"] = seen
    record["files"] = {"predictions": PREDICTIONS_CSV, "skipped": SKIPPED_CSV}
    write_json(out / RUN_JSON, record)
    return PredictRun(predictions, record, out)


def format_summary(run: PredictRun) -> str:
    """A few lines for the terminal: counts, calls per finding, warnings, where the files are."""
    predictions = run.predictions
    table = predictions.table
    n_models = len(run.record["model"]["checkpoints"])
    model = "1 model" if n_models == 1 else f"an ensemble of {n_models} models"
    lines = [
        f"{len(table)} image(s) predicted with {model}; {len(predictions.skipped)} skipped",
        f"thresholds: {predictions.threshold_source}",
    ]
    for label in predictions.labels:
        positives = int(table[f"call_{label}"].sum()) if len(table) else 0
        lines.append(
            f"  {label:<20} positive {positives}/{len(table)} at threshold "
            f"{predictions.thresholds[label]:.3f}"
        )
    seen = run.record.get("seen_patients") or {}
    if seen.get("warning"):
        lines.append(f"warning: {seen['warning']}")
    if predictions.skipped:
        lines.append(f"skipped files and reasons: {run.out / SKIPPED_CSV}")
    lines.append(f"predictions: {run.out / PREDICTIONS_CSV}  (run.json beside it)")
    return "\n".join(lines)
